"""Runtime state of one task in one run (spec/000 §6.1): what the scheduler works with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lattice.core.resource.node import SelectedNode
from lattice.core.workflow.inputs import TaskRef
from lattice.vocabulary import DEFAULT_PRIORITY, BatchConfig, SandboxSpec, TaskResourceRequirements


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
        return self in (
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.SKIPPED,
        )


@dataclass(eq=False)
class BaseTaskRuntime:
    run_id: str
    workflow_id: str
    task_id: str
    task_name: str
    code: bytes
    code_id: str
    requirements: TaskResourceRequirements
    priority: int = DEFAULT_PRIORITY
    sandbox: SandboxSpec | None = None
    status: TaskStatus = TaskStatus.PENDING
    result: Any = None
    selected_node: SelectedNode | None = None
    #: monotonic time it entered the scheduler's queue (for queue-time metrics)
    enqueued_at: float = field(default_factory=time.monotonic)
    #: times it was dispatched (a node lost mid-task dispatches it again)
    attempts: int = 0

    @property
    def key(self) -> str:
        """Unique across runs: the handle id the executor reports back."""
        return f"{self.run_id}/{self.task_id}"


@dataclass(eq=False)
class CodeTaskRuntime(BaseTaskRuntime):
    outputs: tuple[str, ...] = ()
    #: ``from_user`` inputs in wire form, decoded where the task runs
    user_inputs: dict[str, Any] = field(default_factory=dict)
    #: ``from_task`` inputs: key -> the output they read
    upstream: tuple[tuple[str, TaskRef], ...] = ()
    batch: BatchConfig | None = None

    @property
    def is_batchable(self) -> bool:
        return self.batch is not None

    @property
    def batch_group(self) -> str:
        """Tasks batch together when they run the same function under the same name."""
        return f"{self.task_name}:{self.code_id}:{self.requirements}"


@dataclass(eq=False)
class LangGraphTaskRuntime(BaseTaskRuntime):
    serialized_args: bytes = b""
    serialized_kwargs: bytes = b""
