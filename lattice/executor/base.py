"""The executor contract: what the scheduler hands over, and what comes back.

An executor runs a :class:`TaskSubmission` on the node the ResourceManager chose and reports a
:class:`TaskOutcome` through the handle's done-callback, from whatever thread it likes. The
callback is the only way completions reach the scheduler: nothing waits in a loop.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from lattice.context import TaskDirectives
from lattice.core.resource.node import SelectedNode
from lattice.exceptions import TaskErrorInfo
from lattice.vocabulary import SandboxSpec, TaskAttempt, TaskResourceRequirements, code_digest


class TaskKind(str, Enum):
    #: ``func(params: dict) -> dict`` of declared outputs
    CODE = "code"
    #: ``func(list_of_params) -> list_of_output_dicts``
    BATCH = "batch"
    #: ``func(*args, **kwargs) -> Any`` (a LangGraph node)
    LANGGRAPH = "langgraph"


@dataclass(frozen=True)
class TaskSubmission:
    """Everything a worker needs to run one task (or one batch of tasks).

    ``user_inputs`` are wire values (JSON, with pickled leaves) decoded where the task runs;
    ``upstream_inputs`` are the raw outputs of earlier tasks (for Ray, possibly object refs).
    For ``BATCH`` both are lists, one entry per task of the batch. For ``LANGGRAPH``,
    ``args``/``kwargs`` are the client's cloudpickled bytes, unpickled only in the worker.
    """

    task_key: str
    task_name: str
    kind: TaskKind
    code: bytes
    requirements: TaskResourceRequirements
    node: SelectedNode
    outputs: tuple[str, ...] = ()
    user_inputs: Any = None
    upstream_inputs: Any = None
    args: bytes = b""
    kwargs: bytes = b""
    sandbox: SandboxSpec | None = None
    code_id: str = field(default="")
    #: the task and attempt its code runs as (vocabulary.current_attempt); None for a batch
    attempt: TaskAttempt | None = None

    def __post_init__(self) -> None:
        if not self.code_id:
            object.__setattr__(self, "code_id", code_digest(self.code))


@dataclass(frozen=True)
class TaskOutcome:
    """The result of a submission. Exactly one of ``value``/``error`` is meaningful."""

    value: Any = None
    error: TaskErrorInfo | None = None
    #: seconds the task's own code ran, measured where it ran
    duration: float = 0.0
    #: the task did not fail by itself: the worker or node running it died; it may be
    #: retried elsewhere (``error`` then says which node and why)
    lost: bool = False
    #: what the task's code asked of its run through its TaskContext (routing); None: nothing
    directives: TaskDirectives | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


DoneCallback = Callable[[TaskOutcome], None]


class UpstreamFailed(Exception):
    """Raised where a task runs instead of running it, when it was handed over before its
    upstream task finished (see :class:`PendingOutput`) and that task gave no usable output:
    the scheduler discards this outcome."""


def output_of(outcome: TaskOutcome, path: tuple[Any, ...]) -> Any:
    """The value at ``path`` in ``outcome.value`` (an output key, or a batch index and key).

    Raises:
        UpstreamFailed: the outcome is a failure, or has nothing at ``path``.
    """
    if outcome.error is not None:
        raise UpstreamFailed(f"an upstream task failed: {outcome.error.type}")
    value = outcome.value
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise UpstreamFailed(f"an upstream task has no output at {path}") from None
    return value


@dataclass(frozen=True)
class PendingOutput:
    """An upstream input whose task is still running: output ``key`` of the task behind
    ``handle``. Only executors with ``pipelines = True`` are given these (see
    :attr:`ExecutorBackend.pipelines`)."""

    handle: TaskHandle
    key: str


def pending_outputs(sub: TaskSubmission) -> dict[str, PendingOutput]:
    """The upstream inputs of ``sub`` whose tasks are still running, by input name."""
    inputs = sub.upstream_inputs
    if not isinstance(inputs, dict):
        return {}
    return {k: v for k, v in inputs.items() if isinstance(v, PendingOutput)}


def when_resolved(
    sub: TaskSubmission,
    pending: dict[str, PendingOutput],
    ready: Callable[[TaskSubmission], None],
    failed: Callable[[UpstreamFailed], None],
) -> None:
    """Once every task behind ``pending`` (inputs of ``sub``) has ended, call ``ready`` with
    ``sub`` holding their outputs instead, or ``failed`` if one of them gave none; either from
    the done-callback of the last of them."""
    handles = {id(p.handle): p.handle for p in pending.values()}
    outcomes: dict[int, TaskOutcome] = {}
    lock = threading.Lock()

    def upstream_done(handle_id: int, outcome: TaskOutcome) -> None:
        with lock:
            outcomes[handle_id] = outcome
            if len(outcomes) < len(handles):
                return
        try:
            resolved = {k: output_of(outcomes[id(p.handle)], (p.key,)) for k, p in pending.items()}
        except UpstreamFailed as exc:
            failed(exc)
            return
        ready(replace(sub, upstream_inputs={**sub.upstream_inputs, **resolved}))

    for handle_id, handle in handles.items():
        handle.add_done_callback(functools.partial(upstream_done, handle_id))


class TaskHandle(ABC):
    """A submitted task. ``add_done_callback`` fires exactly once, possibly at once."""

    def __init__(self, task_key: str) -> None:
        self.task_key = task_key

    @abstractmethod
    def add_done_callback(self, fn: DoneCallback) -> None: ...

    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def result(self, timeout: float | None = None) -> TaskOutcome:
        """Block until the outcome is known (used by tests and tools, not by the scheduler)."""


class ExecutorBackend(ABC):
    """Where tasks run. Implementations: LocalExecutor (threads), RayExecutor (cluster)."""

    name: str = "base"
    #: whether a submission may be handed over before its upstream tasks have finished, with
    #: :class:`PendingOutput` inputs that the executor resolves once they have (the Ray
    #: executor passes the upstream's object ref and Ray starts the task when it is ready; the
    #: local executor queues it when the upstream's future completes); if an upstream gives no
    #: usable output the task must not run its code: it ends with :class:`UpstreamFailed`,
    #: which the scheduler discards
    pipelines: bool = False

    @abstractmethod
    def initialize(self) -> None: ...

    def cluster_nodes(self) -> list[dict[str, Any]]:
        """The nodes this backend can run on, in ``ray.nodes()`` form; empty means local."""
        return []

    def own_node_id(self) -> str | None:
        """The id of the node the head itself runs on, when the backend has nodes; None for a
        single-node backend (its one node is the resource manager's local node)."""
        return None

    def alive_node_ids(self) -> set[str] | None:
        """Ids of nodes still alive, or None when the backend cannot tell (single node)."""
        return None

    def on_nodes_changed(self, callback: Callable[[], None]) -> None:  # noqa: B027
        """Register a callback fired (from any thread) when cluster membership may have changed.

        Backends without membership (local) never call it.
        """

    def release_node(self, node_id: str) -> None:  # noqa: B027
        """``node_id`` was disconnected and runs none of Lattice's tasks any more: let go of
        whatever the backend keeps there (the Ray executor's task host), so that nothing
        holds the node up while it leaves."""

    @abstractmethod
    def submit(self, submission: TaskSubmission) -> TaskHandle: ...

    def get_result(self, handle: TaskHandle, timeout: float | None = None) -> TaskOutcome:
        return handle.result(timeout)

    def wait(
        self, handles: Iterable[TaskHandle], timeout: float | None = None
    ) -> tuple[list[TaskHandle], list[TaskHandle]]:
        """Split ``handles`` into (done, pending) after at most ``timeout`` seconds."""
        import threading

        handles = list(handles)
        if not handles:
            return [], []
        event = threading.Event()
        for h in handles:
            h.add_done_callback(lambda _outcome: event.set())
        event.wait(timeout)
        done = [h for h in handles if h.done()]
        return done, [h for h in handles if not h.done()]

    @abstractmethod
    def cancel(self, handle: TaskHandle) -> bool:
        """Try to stop a task; its callback still fires (with a cancellation error)."""

    @abstractmethod
    def shutdown(self) -> None: ...
