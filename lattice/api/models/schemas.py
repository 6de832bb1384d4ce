"""Request and response bodies of spec/002 §4, validated at the edge."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from lattice.api.models.storable import check_storable


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Before the fields: a value the head cannot encode again is refused whole.
        check_storable(data)
        return data


class StatusResponse(BaseModel):
    status: str = "success"


class CreateWorkflowResponse(StatusResponse):
    workflow_id: str


class AddTaskRequest(_Body):
    workflow_id: str
    task_type: str
    task_name: str


class AddTaskResponse(StatusResponse):
    task_id: str


class SandboxRequest(_Body):
    level: str
    cpu_time_limit: float | None = Field(None, gt=0)
    memory_limit_mb: int | None = Field(None, gt=0)


class TaskConfigBody(_Body):
    """What a code task is saved with (``/save_task`` and each task of ``/add_tasks``)."""

    task_input: dict[str, Any] = Field(default_factory=dict)
    task_output: dict[str, Any] = Field(default_factory=dict)
    code_str: str | None = None
    #: spec/002 calls it code_ser; the documented client sends serialized_code
    code_ser: str | None = Field(None, validation_alias=AliasChoices("code_ser", "serialized_code"))
    resources: dict[str, Any] | None = None
    batch_config: dict[str, Any] | None = None
    #: not in spec/002: 0 (critical) .. 4 (idle), default 2
    #: 0-4 or a level name (critical, high, normal, low, idle); unset: the run's priority
    priority: int | str | None = None
    #: not in spec/002: a stricter sandbox for this task than the server default
    sandbox: SandboxRequest | None = None


class SaveTaskRequest(TaskConfigBody):
    workflow_id: str
    task_id: str
    task_name: str | None = None


class SaveTaskResponse(StatusResponse):
    pass


class EdgeRequest(_Body):
    source_task_id: str
    target_task_id: str


class BatchTaskRequest(TaskConfigBody):
    #: a UUID the client chose (so that it can refer to the task before the answer); left
    #: out, the server picks one
    task_id: str | None = None
    task_name: str = Field(min_length=1)
    task_type: str = "code"


class AddTasksRequest(_Body):
    """Not in spec/002: several code tasks (each as add_task + save_task_and_add_edge) and
    edges in one request, all or nothing."""

    workflow_id: str
    tasks: list[BatchTaskRequest]
    edges: list[EdgeRequest] = Field(default_factory=list)


class AddTasksResponse(StatusResponse):
    task_ids: list[str]


class AddEdgeRequest(EdgeRequest):
    workflow_id: str


class DelTaskRequest(_Body):
    workflow_id: str
    task_id: str


class RunWorkflowRequest(_Body):
    workflow_id: str
    #: the default of every task that sets none (0-4 or a level name; unset: normal)
    priority: int | str | None = None


class PriorityRequest(_Body):
    #: 0-4 or a level name (critical, high, normal, low, idle)
    priority: int | str
    #: the run, when several live runs hold the task
    run_id: str | None = None


class RunWorkflowResponse(StatusResponse):
    run_id: str


class GetTasksResponse(StatusResponse):
    tasks: list[dict[str, str]]


class AddLangGraphTaskRequest(_Body):
    workflow_id: str
    task_type: str = "langgraph"
    task_name: str
    code_ser: str = Field(validation_alias=AliasChoices("code_ser", "serialized_code"))
    resources: dict[str, Any] | None = None
    #: 0-4 or a level name; unset: normal
    priority: int | str | None = None


class RunLangGraphTaskRequest(_Body):
    workflow_id: str
    task_id: str
    args: str = ""
    kwargs: str = ""


class RunLangGraphTaskResponse(StatusResponse):
    result: Any


class ConnectWorkerRequest(_Body):
    node_ip: str
    node_id: str
    resources: dict[str, Any]


class DisconnectWorkerRequest(_Body):
    node_id: str


class GetRayPortResponse(StatusResponse):
    port: int


class RunStatusResponse(StatusResponse):
    run: dict[str, Any]


class HealthResponse(StatusResponse):
    executor: str
    nodes: int
