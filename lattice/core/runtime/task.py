"""Runtime state of one task in one run (spec/000 §6.1): what the scheduler works with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lattice.core.workflow.inputs import TaskRef
from lattice.vocabulary import DEFAULT_PRIORITY, BatchConfig, SandboxSpec, TaskResourceRequirements


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
    #: when it entered the scheduler's queue, on the scheduler's clock (queue-time metrics)
    enqueued_at: float = 0.0
    #: times its start was announced (a node lost mid-task starts it again); its status is
    #: the run's (core.run.state), never kept here
    attempts: int = 0
    #: times it was handed to the executor (a chained follower may be taken back and
    #: handed over again): makes each submission's key unique
    dispatches: int = 0

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
