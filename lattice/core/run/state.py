"""The fold: a run's state is what its events say, and nothing else (DESIGN decision 9).

:class:`RunState` is the one place task and run status live. It applies one event at a time
(one ``_apply_<kind>`` per event class), does no I/O and reads no clock, so folding a run's
stored events in order always rebuilds the state the live run had. The scheduler core keeps one
per run on its thread to decide what comes next; the run's log keeps one on the event loop to
answer ``GET /runs/{id}``; both are folds of the same events.

An event that does not fit the state (a second outcome for a task, anything after the run
finished) raises :class:`InvalidTransition`: the core checks before it emits, so this only fires
on a bug, loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lattice.core.run.events import (
    RunEvent,
    RunFinished,
    RunStatus,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskPriorityChanged,
    TaskSkipped,
    TaskStarted,
)


class TaskStatus(str, Enum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: not in spec/000: a task not run because a task it depends on failed or was cancelled
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED}
)


class InvalidTransition(RuntimeError):
    """An event that the run's state cannot take (a bug in whoever emitted it)."""


@dataclass
class TaskState:
    task_id: str
    task_name: str = ""
    status: TaskStatus = TaskStatus.PENDING
    #: how many times it was started (more than 1 after its node was lost)
    attempt: int = 0
    node_id: str | None = None
    #: outputs in wire form, once finished
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    #: set once it was changed while queued (else as declared)
    priority: int | None = None

    def view(self) -> dict[str, Any]:
        """What ``GET /runs/{id}`` shows of the task."""
        out: dict[str, Any] = {"status": self.status.value}
        if self.node_id is not None:
            out["node_id"] = self.node_id
        if self.status is TaskStatus.COMPLETED:
            out["result"] = self.result
        elif self.status is TaskStatus.FAILED:
            out["error"] = self.error
        elif self.status is TaskStatus.SKIPPED:
            out["reason"] = self.reason
        return out


class RunState:
    """One run: the state of each of its tasks, and whether and how the run ended."""

    def __init__(self, run_id: str, workflow_id: str, tasks: Iterable[tuple[str, str]]) -> None:
        """``tasks``: ``(task_id, task_name)`` of every task of the run, in workflow order."""
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.tasks: dict[str, TaskState] = {tid: TaskState(tid, name) for tid, name in tasks}
        self.open = len(self.tasks)
        self.finished: RunFinished | None = None
        self._handlers: dict[type[RunEvent], Callable[[Any], None]] = {
            TaskStarted: self._apply_task_started,
            TaskFinished: self._apply_task_finished,
            TaskFailed: self._apply_task_failed,
            TaskSkipped: self._apply_task_skipped,
            TaskCancelled: self._apply_task_cancelled,
            TaskPriorityChanged: self._apply_task_priority_changed,
            RunFinished: self._apply_run_finished,
        }

    @classmethod
    def replay(
        cls,
        run_id: str,
        workflow_id: str,
        tasks: Iterable[tuple[str, str]],
        events: Iterable[RunEvent],
    ) -> RunState:
        """The state after ``events``, folded in order from a fresh run."""
        state = cls(run_id, workflow_id, tasks)
        for event in events:
            state.apply(event)
        return state

    def add_task(self, task_id: str, task_name: str) -> None:
        """One more task, for a run that takes its tasks one at a time (a LangGraph call)."""
        if task_id in self.tasks:
            raise InvalidTransition(f"run {self.run_id} has a task {task_id} already")
        self.tasks[task_id] = TaskState(task_id, task_name)
        self.open += 1

    # --- reading ----------------------------------------------------------------------------

    @property
    def status(self) -> RunStatus:
        return RunStatus.RUNNING if self.finished is None else self.finished.status

    def task(self, task_id: str) -> TaskState:
        return self.tasks[task_id]

    def is_terminal(self, task_id: str) -> bool:
        state = self.tasks.get(task_id)
        return state is None or state.status.terminal

    @property
    def all_terminal(self) -> bool:
        return self.open == 0

    def counts(self) -> tuple[tuple[str, int], ...]:
        """Task status -> count, in the order the statuses first occur among the tasks."""
        counts: dict[str, int] = {}
        for task in self.tasks.values():
            counts[task.status.value] = counts.get(task.status.value, 0) + 1
        return tuple(counts.items())

    def outcome(self, cancelling: bool) -> RunStatus:
        """How the run ends once every task is terminal: failed if a task failed, cancelled if
        the run was being cancelled or a task was, else completed."""
        statuses = {t.status for t in self.tasks.values()}
        if TaskStatus.FAILED in statuses:
            return RunStatus.FAILED
        if cancelling or TaskStatus.CANCELLED in statuses:
            return RunStatus.CANCELLED
        return RunStatus.COMPLETED

    def view(self) -> dict[str, dict[str, Any]]:
        return {tid: task.view() for tid, task in self.tasks.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunState):
            return NotImplemented
        return (
            self.run_id == other.run_id
            and self.workflow_id == other.workflow_id
            and self.tasks == other.tasks
            and self.finished == other.finished
        )

    __hash__ = None  # type: ignore[assignment]

    # --- the fold ---------------------------------------------------------------------------

    def apply(self, event: RunEvent) -> None:
        if self.finished is not None:
            raise InvalidTransition(f"run {self.run_id} has finished; {event.kind} comes too late")
        self._handlers[type(event)](event)

    def _open_task(self, task_id: str, kind: str) -> TaskState:
        task = self.tasks.get(task_id)
        if task is None:
            raise InvalidTransition(f"run {self.run_id} has no task {task_id} ({kind})")
        if task.status.terminal:
            raise InvalidTransition(
                f"task {task_id} of run {self.run_id} is already {task.status.value} ({kind})"
            )
        return task

    def _end(self, task: TaskState, status: TaskStatus) -> None:
        task.status = status
        self.open -= 1

    def _apply_task_started(self, event: TaskStarted) -> None:
        task = self._open_task(event.task_id, event.kind)
        task.status, task.attempt, task.node_id = TaskStatus.RUNNING, event.attempt, event.node_id

    def _apply_task_finished(self, event: TaskFinished) -> None:
        task = self._open_task(event.task_id, event.kind)
        task.result = event.result
        self._end(task, TaskStatus.COMPLETED)

    def _apply_task_failed(self, event: TaskFailed) -> None:
        task = self._open_task(event.task_id, event.kind)
        task.error = event.error.to_dict()
        self._end(task, TaskStatus.FAILED)

    def _apply_task_skipped(self, event: TaskSkipped) -> None:
        task = self._open_task(event.task_id, event.kind)
        task.reason = event.reason
        self._end(task, TaskStatus.SKIPPED)

    def _apply_task_cancelled(self, event: TaskCancelled) -> None:
        self._end(self._open_task(event.task_id, event.kind), TaskStatus.CANCELLED)

    def _apply_task_priority_changed(self, event: TaskPriorityChanged) -> None:
        self._open_task(event.task_id, event.kind).priority = event.priority

    def _apply_run_finished(self, event: RunFinished) -> None:
        self.finished = event
