"""What a task's code can say to its run while it runs: the :class:`TaskContext`.

A task function may take a second parameter; it then receives a :class:`TaskContext`::

    @task(inputs=["draft"], outputs=["verdict"])
    def critic(params, ctx):
        ...
        ctx.goto("writer")  # or ctx.end()

Functions with one parameter keep working unchanged. The context is built where the task runs
(a thread of the head, a Ray worker, a sandbox child) and what the code asks of the run is
carried back with the task's outcome as :class:`TaskDirectives`: data, decided on by the head's
scheduler. This module imports nothing of the server, so the client SDK can name it.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import LatticeUsageError
from lattice.vocabulary import TaskAttempt

#: what a task may name in one goto (a router picks among its own successors)
MAX_GOTO_TARGETS = 1024


@dataclass(frozen=True)
class TaskDirectives:
    """What one execution of a task asked of its run, beside its outputs.

    ``goto``: the names of the successors that should run (None: every successor, spec/003
    ``Next``). ``end``: finish the run successfully once the tasks already running are done
    (spec/003 ``End``).
    """

    goto: tuple[str, ...] | None = None
    end: bool = False

    @property
    def empty(self) -> bool:
        return self.goto is None and not self.end

    def to_dict(self) -> dict[str, Any]:
        return {"goto": list(self.goto) if self.goto is not None else None, "end": self.end}

    @classmethod
    def from_dict(cls, doc: Any) -> TaskDirectives:
        """Parse what a task process sent; raises ValueError for anything malformed (it may
        come from an untrusted sandbox child)."""
        if not isinstance(doc, dict):
            raise ValueError("directives are not a JSON object")
        goto = doc.get("goto")
        end = doc.get("end", False)
        if not isinstance(end, bool):
            raise ValueError("directives: 'end' is not a boolean")
        if goto is None:
            return cls(end=end)
        if (
            not isinstance(goto, list)
            or len(goto) > MAX_GOTO_TARGETS
            or not all(isinstance(t, str) for t in goto)
        ):
            raise ValueError("directives: 'goto' is not a list of task names")
        return cls(goto=tuple(goto), end=end)


class TaskContext:
    """The run as one execution of a task sees it (design decision 11).

    ``attempt`` says which task of which run this is and its attempt number; its
    ``idempotency_key`` is the same for every attempt. Routing: :meth:`goto` and :meth:`end`.
    Cancellation: :meth:`is_cancelled` and :meth:`wait_cancelled`.
    """

    def __init__(
        self,
        attempt: TaskAttempt | None,
        task_name: str,
        cancelled: threading.Event | None = None,
    ) -> None:
        self._attempt = attempt
        self.task_name = task_name
        #: set by the executor when the task or its run is cancelled (see docs/cancellation.md)
        self._cancelled = cancelled if cancelled is not None else threading.Event()
        self._goto: list[str] | None = None
        self._end = False

    @property
    def attempt(self) -> TaskAttempt:
        if self._attempt is None:
            raise LatticeUsageError(f"task {self.task_name} runs in a batch: it has no own attempt")
        return self._attempt

    @property
    def run_id(self) -> str:
        return self.attempt.run_id

    @property
    def task_id(self) -> str:
        return self.attempt.task_id

    @property
    def idempotency_key(self) -> str:
        return self.attempt.idempotency_key

    # --- routing (spec/003 NextAction) ------------------------------------------------------

    def goto(self, *targets: str) -> None:
        """Run only these of the task's declared successors once it finishes; the others, and
        what depends only on them, are skipped ("not routed"). May be called more than once:
        the targets add up. A name that is not a declared route target fails the task."""
        if not targets:
            raise LatticeUsageError("goto() needs at least one task name")
        for t in targets:
            if not isinstance(t, str) or not t:
                raise LatticeUsageError(f"goto() takes task names, got {t!r}")
        chosen = self._goto if self._goto is not None else []
        chosen.extend(t for t in targets if t not in chosen)
        if len(chosen) > MAX_GOTO_TARGETS:
            raise LatticeUsageError(f"goto() names more than {MAX_GOTO_TARGETS} tasks")
        self._goto = chosen

    def end(self) -> None:
        """Finish the run successfully once this task and the tasks already running are done;
        nothing else starts."""
        self._end = True

    # --- cancellation (spec/003 CancellationToken) -------------------------------------------

    def is_cancelled(self) -> bool:
        """Whether this task or its run has been cancelled: a cooperative task checks it
        between steps and returns (what it returns then is discarded)."""
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until the task is cancelled or ``timeout`` seconds pass; True if cancelled.
        Use it instead of ``time.sleep`` between steps, so a cancel wakes the task at once."""
        return self._cancelled.wait(timeout)

    def directives(self) -> TaskDirectives:
        """What this execution asked of its run so far."""
        goto = tuple(self._goto) if self._goto is not None else None
        return TaskDirectives(goto=goto, end=self._end)


def takes_context(func: Callable[..., Any]) -> bool:
    """Whether ``func`` accepts a second positional argument (the :class:`TaskContext`)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2
