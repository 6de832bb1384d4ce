"""LangGraph routes (spec/002 §3.2, §5.6-5.7)."""

from __future__ import annotations

from fastapi import APIRouter

from lattice.api.deps import Orch
from lattice.api.models.schemas import (
    AddLangGraphTaskRequest,
    AddTaskResponse,
    RunLangGraphTaskRequest,
    RunLangGraphTaskResponse,
)
from lattice.exceptions import TaskFailedError

router = APIRouter(tags=["langgraph"])


class _NodeFailed(TaskFailedError):
    """Raised to the error handler: the node's own exception, reported with status 'error'."""


@router.post("/add_langgraph_task", response_model=AddTaskResponse)
async def add_langgraph_task(body: AddLangGraphTaskRequest, orch: Orch) -> AddTaskResponse:
    task_id = orch.add_langgraph_task(
        body.workflow_id,
        body.task_type,
        body.task_name,
        body.code_ser,
        body.resources,
        body.priority,
    )
    return AddTaskResponse(task_id=task_id)


@router.post("/run_langgraph_task")
async def run_langgraph_task(body: RunLangGraphTaskRequest, orch: Orch) -> dict[str, object]:
    """Run the node once, blocking until it returns. A node that raises answers 200 with
    ``{"status": "error", "error": {type, message, traceback}}``: the request was fine, the
    node's code failed, and the client re-raises it in the graph's process."""
    result, error = await orch.run_langgraph_task(
        body.workflow_id, body.task_id, body.args, body.kwargs
    )
    if error is not None:
        return {"status": "error", "error": error.to_dict()}
    return RunLangGraphTaskResponse(result=result).model_dump()
