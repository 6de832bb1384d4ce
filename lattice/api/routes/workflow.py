"""Workflow routes (spec/002 §3.1, §5.1-5.5)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from lattice.api.deps import Orch, ws_orchestrator
from lattice.api.models.schemas import (
    AddEdgeRequest,
    AddTaskRequest,
    AddTaskResponse,
    AddTasksRequest,
    AddTasksResponse,
    BatchTaskRequest,
    CreateWorkflowResponse,
    DelTaskRequest,
    GetTasksResponse,
    RunWorkflowRequest,
    RunWorkflowResponse,
    SandboxRequest,
    SaveTaskRequest,
    StatusResponse,
    TaskConfigBody,
)
from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.core.workflow.base import CodeTaskConfig, CodeTaskDraft, TaskType
from lattice.exceptions import LatticeInputError, NotFoundError
from lattice.vocabulary import SandboxLevel, SandboxSpec

router = APIRouter(tags=["workflow"])


@router.post("/create_workflow", response_model=CreateWorkflowResponse)
async def create_workflow(orch: Orch) -> CreateWorkflowResponse:
    return CreateWorkflowResponse(workflow_id=orch.create_workflow().workflow_id)


@router.post("/add_task", response_model=AddTaskResponse)
async def add_task(body: AddTaskRequest, orch: Orch) -> AddTaskResponse:
    return AddTaskResponse(task_id=orch.add_task(body.workflow_id, body.task_type, body.task_name))


def _sandbox(request: SandboxRequest | None) -> SandboxSpec | None:
    if request is None:
        return None
    return SandboxSpec(
        level=SandboxLevel.parse(request.level),
        cpu_time_limit=request.cpu_time_limit,
        memory_limit_mb=request.memory_limit_mb,
    )


def _config(body: TaskConfigBody) -> CodeTaskConfig:
    return CodeTaskConfig(
        serialized_code=body.code_ser,
        task_input=body.task_input,
        task_output=body.task_output,
        code_str=body.code_str,
        resources=body.resources,
        batch_config=body.batch_config,
        priority=body.priority,
        sandbox=_sandbox(body.sandbox),
    )


def _save(orch: Orchestrator, body: SaveTaskRequest, *, add_edges: bool) -> StatusResponse:
    orch.save_task(
        body.workflow_id,
        body.task_id,
        _config(body),
        add_edges=add_edges,
        task_name=body.task_name,
    )
    return StatusResponse()


def _draft(task: BatchTaskRequest) -> CodeTaskDraft:
    if TaskType.parse(task.task_type) is not TaskType.CODE:
        raise LatticeInputError(
            f"task {task.task_name!r}: /add_tasks takes code tasks, not {task.task_type!r}"
        )
    return CodeTaskDraft(task.task_id or str(uuid.uuid4()), task.task_name, _config(task))


@router.post("/add_tasks", response_model=AddTasksResponse)
async def add_tasks(body: AddTasksRequest, orch: Orch) -> AddTasksResponse:
    """Several code tasks and edges in one request, all or nothing (not in spec/002).

    Each task is what ``/add_task`` + ``/save_task_and_add_edge`` would make of it; its
    ``task_id`` may be a UUID the client chose, so that tasks of one batch can refer to each
    other. Answers the task ids in order.
    """
    drafts = [_draft(task) for task in body.tasks]
    edges = [(e.source_task_id, e.target_task_id) for e in body.edges]
    orch.add_code_tasks(body.workflow_id, drafts, edges)
    return AddTasksResponse(task_ids=[d.task_id for d in drafts])


@router.post("/save_task", response_model=StatusResponse)
async def save_task(body: SaveTaskRequest, orch: Orch) -> StatusResponse:
    """Save a task's configuration; its ``from_task`` inputs must already have edges."""
    return _save(orch, body, add_edges=False)


@router.post("/save_task_and_add_edge", response_model=StatusResponse)
async def save_task_and_add_edge(body: SaveTaskRequest, orch: Orch) -> StatusResponse:
    """Save a task's configuration and add the edges its ``from_task`` inputs imply."""
    return _save(orch, body, add_edges=True)


@router.post("/add_edge", response_model=StatusResponse)
async def add_edge(body: AddEdgeRequest, orch: Orch) -> StatusResponse:
    orch.add_edge(body.workflow_id, body.source_task_id, body.target_task_id)
    return StatusResponse()


@router.post("/del_edge", response_model=StatusResponse)
async def del_edge(body: AddEdgeRequest, orch: Orch) -> StatusResponse:
    orch.del_edge(body.workflow_id, body.source_task_id, body.target_task_id)
    return StatusResponse()


@router.post("/del_task", response_model=StatusResponse)
async def del_task(body: DelTaskRequest, orch: Orch) -> StatusResponse:
    orch.del_task(body.workflow_id, body.task_id)
    return StatusResponse()


@router.get("/get_workflow_tasks/{workflow_id}", response_model=GetTasksResponse)
async def get_workflow_tasks(workflow_id: str, orch: Orch) -> GetTasksResponse:
    tasks = [
        {"task_id": t.task_id, "task_name": t.task_name, "task_type": t.task_type.value}
        for t in orch.workflow_tasks(workflow_id)
    ]
    return GetTasksResponse(tasks=tasks)


@router.delete("/workflows/{workflow_id}", response_model=StatusResponse)
async def delete_workflow(workflow_id: str, orch: Orch) -> StatusResponse:
    """Forget a workflow and its finished runs (memory and store); 409 while one runs."""
    orch.delete_workflow(workflow_id)
    return StatusResponse()


@router.post("/run_workflow", response_model=RunWorkflowResponse)
async def run_workflow(body: RunWorkflowRequest, orch: Orch) -> RunWorkflowResponse:
    return RunWorkflowResponse(run_id=orch.run_workflow(body.workflow_id, body.priority))


@router.websocket("/get_workflow_res/{workflow_id}/{run_id}")
async def get_workflow_res(
    websocket: WebSocket, workflow_id: str, run_id: str, from_seq: int = 0
) -> None:
    """Stream the run's event log from ``from_seq`` (default: the start) until the run ends.

    Each message is ``{"type", "data", "seq"}``; the last is ``finish_workflow``. An unknown
    workflow or run is closed at once with code 4404 and the reason.
    """
    orch = ws_orchestrator(websocket)
    await websocket.accept()
    try:
        run_log = orch.get_run_log(run_id, workflow_id)
    except NotFoundError as exc:
        await websocket.close(code=4404, reason=str(exc)[:120])
        return
    try:
        async for event in run_log.follow(from_seq):
            await websocket.send_json(event.to_message())
    except WebSocketDisconnect:
        return
    if not run_log.closed:
        # The head is stopping with the run unfinished (it resumes after a restart): 1012
        # (service restart) tells the client to come back, not that the run is over.
        await websocket.close(code=1012, reason="the head is restarting; reconnect")
        return
    await websocket.close()
