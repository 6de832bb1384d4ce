"""The typed events of a run: one frozen dataclass per kind, each with its wire form.

A run's events are the only record of what happened to it (DESIGN decision 9). The scheduler
core decides them, :class:`~lattice.core.run.state.RunState` folds them, the run's log keeps
them with sequence numbers, and the WebSocket sends each one's :meth:`RunEvent.to_wire` form,
which is spec/002's message exactly (the fields, their order and the ``attempt`` rule are what
clients have always read).

Fields marked ``compare=False`` are kept with an event but are not part of its wire form
(times, durations): the log keeps them for the store and for whoever shows timings. Events of
kinds still to come (attempts with retries, barriers, stream chunks, logs, priority changes)
are further subclasses registered in :data:`EVENT_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar

from lattice.exceptions import TaskErrorInfo


class RunStatus(str, Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunEvent:
    """Something that happened to one run. Subclasses set :attr:`kind` (the wire ``type``)."""

    kind: ClassVar[str] = ""
    run_id: str
    workflow_id: str

    def to_wire(self) -> dict[str, Any]:
        """The ``data`` of this event's WebSocket message (spec/002 §5.5)."""
        raise NotImplementedError

    def to_record(self) -> dict[str, Any]:
        """Every field, for a store: :func:`event_from_record` gives the same event back."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(record.get("error"), TaskErrorInfo):
            record["error"] = record["error"].to_dict()
        return {"kind": self.kind, **record}


@dataclass(frozen=True)
class TaskEvent(RunEvent):
    task_id: str


@dataclass(frozen=True)
class TaskStarted(TaskEvent):
    """A task was handed to a node (again, with ``attempt`` > 1, after its node was lost)."""

    kind: ClassVar[str] = "start_task"
    task_name: str = ""
    node_id: str = ""
    node_ip: str = ""
    gpu_ids: tuple[int, ...] = ()
    attempt: int = 1
    #: seconds it waited for a node (metrics)
    queued_for: float = field(default=0.0, compare=False)

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "node_ip": self.node_ip,
            "node_id": self.node_id,
            "gpu_ids": list(self.gpu_ids),
        }
        if self.attempt > 1:
            data["attempt"] = self.attempt
        return data


@dataclass(frozen=True)
class TaskFinished(TaskEvent):
    kind: ClassVar[str] = "finish_task"
    task_name: str = ""
    #: the outputs in wire form (serialization.encode_value)
    result: Any = None
    node_id: str = field(default="", compare=False)
    #: seconds the task's own code ran
    duration: float = field(default=0.0, compare=False)

    def to_wire(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "result": self.result,
        }


@dataclass(frozen=True)
class TaskFailed(TaskEvent):
    kind: ClassVar[str] = "task_exception"
    task_name: str = ""
    error: TaskErrorInfo = field(default_factory=lambda: TaskErrorInfo("", "", ""))
    node_id: str = field(default="", compare=False)
    duration: float = field(default=0.0, compare=False)

    def to_wire(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "error": self.error.to_dict(),
        }


@dataclass(frozen=True)
class TaskSkipped(TaskEvent):
    """Not run, and never will be: a task it depends on failed or was cancelled."""

    kind: ClassVar[str] = "task_skipped"
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, "task_id": self.task_id, "reason": self.reason}


@dataclass(frozen=True)
class TaskCancelled(TaskEvent):
    kind: ClassVar[str] = "task_cancelled"
    task_name: str = field(default="", compare=False)
    node_id: str = field(default="", compare=False)

    def to_wire(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, "task_id": self.task_id}


@dataclass(frozen=True)
class TaskPriorityChanged(TaskEvent):
    """A queued task's priority was changed (``PUT /queue/tasks/{task_id}/priority``)."""

    kind: ClassVar[str] = "task_priority_changed"
    priority: int = 2
    previous: int = 2

    def to_wire(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "priority": self.priority,
            "previous": self.previous,
        }


@dataclass(frozen=True)
class RunFinished(RunEvent):
    """The last event of a run: its outcome and how many tasks ended in each status."""

    kind: ClassVar[str] = "finish_workflow"
    status: RunStatus = RunStatus.COMPLETED
    #: task status value -> count, in the order the statuses first occur among the tasks
    tasks: tuple[tuple[str, int], ...] = ()
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": self.status.value,
            "success": self.status is RunStatus.COMPLETED,
            "tasks": dict(self.tasks),
        }
        if self.reason:
            data["reason"] = self.reason
        return data

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        record["status"] = self.status.value
        record["tasks"] = [list(pair) for pair in self.tasks]
        return record


#: wire ``type`` -> event class
EVENT_TYPES: dict[str, type[RunEvent]] = {
    cls.kind: cls
    for cls in (
        TaskStarted,
        TaskFinished,
        TaskFailed,
        TaskSkipped,
        TaskCancelled,
        TaskPriorityChanged,
        RunFinished,
    )
}


def event_from_record(record: dict[str, Any]) -> RunEvent:
    """Inverse of :meth:`RunEvent.to_record`. Raises ValueError for an unknown kind."""
    values = dict(record)
    kind = values.pop("kind", None)
    cls = EVENT_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown run event kind {kind!r}")
    if cls is TaskFailed:
        values["error"] = TaskErrorInfo.from_dict(values["error"])
    elif cls is RunFinished:
        values["status"] = RunStatus(values["status"])
        values["tasks"] = tuple((str(k), int(n)) for k, n in values["tasks"])
    if "gpu_ids" in values:
        values["gpu_ids"] = tuple(values["gpu_ids"])
    return cls(**values)


def event_from_wire(run_id: str, message: dict[str, Any]) -> RunEvent:
    """The event a WebSocket message (``{"type", "data", "seq"}``) of run ``run_id`` stands
    for: the fields the wire leaves out (times, a cancelled task's name) take their defaults,
    which no fold reads. Raises ValueError for an unknown type."""
    kind, data = message.get("type"), dict(message.get("data") or {})
    cls = EVENT_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown run event type {kind!r}")
    if cls is RunFinished:
        return RunFinished(
            run_id,
            str(data["workflow_id"]),
            RunStatus(data["status"]),
            tuple((str(k), int(n)) for k, n in dict(data.get("tasks") or {}).items()),
            data.get("reason"),
        )
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    if cls is TaskFailed:
        values["error"] = TaskErrorInfo.from_dict(data["error"])
    if "gpu_ids" in values:
        values["gpu_ids"] = tuple(values["gpu_ids"])
    return cls(run_id=run_id, **values)
