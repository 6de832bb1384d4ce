"""Messages between the orchestrator, the scheduler thread and executor callbacks.

Each :class:`MessageType` has one typed payload class; nobody reads payloads by string key.
What the scheduler tells the orchestrator is a run event (:mod:`lattice.core.run.events`),
sent under the message type of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lattice.core.resource.node import NodeResources
from lattice.core.run.events import RunEvent
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
    #: scheduler -> orchestrator: a task will never run (what it depends on failed)
    TASK_SKIPPED = "task_skipped"
    #: scheduler -> orchestrator: a task was cancelled before or while running
    TASK_CANCELLED = "task_cancelled"
    #: executor callback -> scheduler: a submission ended (internal)
    TASK_DONE = "task_done"
    #: scheduler thread -> its core: the executor took a submission, or refused it (internal)
    SUBMITTED = "submitted"
    SUBMIT_REFUSED = "submit_refused"
    # workflows (runs)
    CLEAR_WORKFLOW = "clear_workflow"
    STOP_WORKFLOW = "stop_workflow"
    FINISH_WORKFLOW = "finish_workflow"
    # workers
    START_WORKER = "start_worker"
    STOP_WORKER = "stop_worker"
    #: executor -> scheduler: cluster membership may have changed (internal)
    NODES_CHANGED = "nodes_changed"
    #: scheduler thread -> its core: what the executor says the cluster is now (internal)
    NODES_OBSERVED = "nodes_observed"
    #: orchestrator -> scheduler thread: what is queued and why (answered by a callback)
    QUEUE_QUERY = "queue_query"
    #: orchestrator -> scheduler: one task of a run: change its priority, or cancel it
    SET_TASK_PRIORITY = "set_task_priority"
    CANCEL_TASK = "cancel_task"
    #: scheduler -> orchestrator: a queued task's priority changed
    TASK_PRIORITY_CHANGED = "task_priority_changed"
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
    """Every task of a run at once, in workflow order: the scheduler learns what waits for a
    task before that task can finish."""

    tasks: tuple[RunTaskData, ...]
    run_id: str = ""
    workflow_id: str = ""
    #: the run's recorded events, when it resumes after a restart: the core starts from
    #: their fold (finished tasks keep their recorded outputs and never run again)
    history: tuple[RunEvent, ...] = ()


@dataclass(frozen=True)
class TaskDoneData:
    key: str
    outcome: TaskOutcome
    #: per task of the submission: the encoded result (or None when the outcome failed)
    encoded: Any = None


@dataclass(frozen=True)
class SubmittedData:
    key: str


@dataclass(frozen=True)
class SubmitRefusedData:
    key: str
    error: TaskErrorInfo


@dataclass(frozen=True)
class RunControlData:
    run_id: str


@dataclass(frozen=True)
class StartWorkerData:
    node_id: str
    node_ip: str
    resources: NodeResources
    #: whether the cluster has this node alive (None: cannot tell); the scheduler thread
    #: asks the executor before its core decides
    in_cluster: bool | None = None


@dataclass(frozen=True)
class StopWorkerData:
    node_id: str


@dataclass(frozen=True)
class NodesObservedData:
    #: ids of the nodes alive in the cluster, or None when the executor cannot tell
    alive: frozenset[str] | None
    #: ``ray.nodes()`` entries of alive nodes the scheduler did not know yet
    new_nodes: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class TaskControlData:
    run_id: str
    task_id: str
    #: the new priority, for SET_TASK_PRIORITY
    priority: int | None = None


@dataclass(frozen=True)
class QueueQueryData:
    #: called on the scheduler thread with the core's QueueView
    reply: Callable[[Any], None]


@dataclass(frozen=True)
class NoData:
    pass


MessageData = (
    RunTaskData
    | RunTasksData
    | RunEvent
    | TaskDoneData
    | SubmittedData
    | SubmitRefusedData
    | RunControlData
    | StartWorkerData
    | StopWorkerData
    | NodesObservedData
    | QueueQueryData
    | TaskControlData
    | NoData
)


@dataclass(frozen=True)
class Message:
    message_type: MessageType
    data: MessageData = NoData()


#: the message type each run event travels under, scheduler -> orchestrator
EVENT_MESSAGE_TYPES: dict[str, MessageType] = {
    "start_task": MessageType.START_TASK,
    "finish_task": MessageType.FINISH_TASK,
    "task_exception": MessageType.TASK_EXCEPTION,
    "task_skipped": MessageType.TASK_SKIPPED,
    "task_cancelled": MessageType.TASK_CANCELLED,
    "task_priority_changed": MessageType.TASK_PRIORITY_CHANGED,
    "finish_workflow": MessageType.FINISH_WORKFLOW,
}


def event_message(event: RunEvent) -> Message:
    return Message(EVENT_MESSAGE_TYPES[event.kind], event)
