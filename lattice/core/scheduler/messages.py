"""Messages between the orchestrator, the scheduler thread and executor callbacks.

Each :class:`MessageType` has one typed payload class; nobody reads payloads by string key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from lattice.core.resource.node import NodeResources
from lattice.core.runtime.task import BaseTaskRuntime
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome


class MessageType(Enum):
    # tasks
    RUN_TASK = "run_task"
    #: every task of a run, in one message (see RunTasksData)
    RUN_TASKS = "run_tasks"
    START_TASK = "start_task"
    FINISH_TASK = "finish_task"
    TASK_EXCEPTION = "task_exception"
    #: scheduler -> orchestrator: a task was cancelled before or while running
    TASK_CANCELLED = "task_cancelled"
    #: executor callback -> scheduler: a submission ended (internal)
    TASK_DONE = "task_done"
    # workflows (runs)
    CLEAR_WORKFLOW = "clear_workflow"
    STOP_WORKFLOW = "stop_workflow"
    FINISH_WORKFLOW = "finish_workflow"
    # workers
    START_WORKER = "start_worker"
    STOP_WORKER = "stop_worker"
    #: executor -> scheduler: cluster membership may have changed (internal)
    NODES_CHANGED = "nodes_changed"
    # LLM instances
    START_LLM_INSTANCE = "start_llm_instance"
    STOP_LLM_INSTANCE = "stop_llm_instance"
    FINISH_LLM_INSTANCE_LAUNCH = "finish_llm_instance_launch"
    # system
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class RunTaskData:
    task: BaseTaskRuntime
    #: ids of tasks of the same run that must finish first (the scheduler holds it till then)
    after: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RunTasksData:
    """Every task of a run at once: the scheduler learns what waits for a task before that
    task can finish."""

    tasks: tuple[RunTaskData, ...]


@dataclass(frozen=True)
class TaskStartedData:
    run_id: str
    workflow_id: str
    task_id: str
    task_name: str
    node_id: str
    node_ip: str
    gpu_ids: tuple[int, ...] = ()
    #: 1 for the first dispatch; more when the task is dispatched again after its node was lost
    attempt: int = 1


@dataclass(frozen=True)
class TaskFinishedData:
    run_id: str
    workflow_id: str
    task_id: str
    task_name: str
    #: the raw value (dependants read it)
    result: Any
    #: the wire form of ``result`` (serialization.encode_value), made off the event loop
    encoded: Any
    node_id: str
    duration: float


@dataclass(frozen=True)
class TaskFailedData:
    run_id: str
    workflow_id: str
    task_id: str
    task_name: str
    error: TaskErrorInfo
    node_id: str = ""


@dataclass(frozen=True)
class TaskCancelledData:
    run_id: str
    workflow_id: str
    task_id: str
    task_name: str


@dataclass(frozen=True)
class TaskDoneData:
    key: str
    outcome: TaskOutcome
    #: per task of the submission: the encoded result (or None when the outcome failed)
    encoded: Any = None


@dataclass(frozen=True)
class RunControlData:
    run_id: str


@dataclass(frozen=True)
class RunFinishedData:
    run_id: str
    workflow_id: str
    status: str


@dataclass(frozen=True)
class StartWorkerData:
    node_id: str
    node_ip: str
    resources: NodeResources


@dataclass(frozen=True)
class StopWorkerData:
    node_id: str


@dataclass(frozen=True)
class LlmInstanceData:
    instance_id: str
    model: str = ""
    node_id: str = ""


@dataclass(frozen=True)
class NoData:
    pass


MessageData = (
    RunTaskData
    | RunTasksData
    | TaskStartedData
    | TaskFinishedData
    | TaskFailedData
    | TaskCancelledData
    | TaskDoneData
    | RunControlData
    | RunFinishedData
    | StartWorkerData
    | StopWorkerData
    | LlmInstanceData
    | NoData
)


@dataclass(frozen=True)
class Message:
    message_type: MessageType
    data: MessageData = NoData()
