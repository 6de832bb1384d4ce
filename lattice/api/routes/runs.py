"""Beyond spec/002: read runs over plain HTTP, cancel or retire them; health, nodes, metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import cloudpickle
from fastapi import APIRouter, Request, Response

from lattice.api.deps import Orch
from lattice.api.models.schemas import HealthResponse, RunStatusResponse, StatusResponse
from lattice.core.run.events import RunStatus
from lattice.core.run.log import RunLog
from lattice.core.run.state import TaskStatus
from lattice.core.run.view import run_detail, run_row
from lattice.exceptions import LatticeInputError, LatticeUsageError, NotFoundError
from lattice.serialization import LargeValueLeaf, SealedValue, encode_value

router = APIRouter(tags=["runs"])


@router.get("/runs")
async def list_runs(
    orch: Orch, workflow_id: str | None = None, status: str | None = None, limit: int = 500
) -> dict[str, object]:
    """The runs the head holds, newest first: status, times, task counts. ``workflow_id``
    and ``status`` (running, completed, failed, cancelled) filter; ``limit`` caps the list."""
    if status is not None and status not in {s.value for s in RunStatus}:
        raise LatticeInputError(
            f"status must be one of {sorted(s.value for s in RunStatus)}, got {status!r}"
        )
    if limit < 1:
        raise LatticeInputError(f"limit must be at least 1, got {limit}")
    rows = [run_row(log) for log in orch.run_logs()]
    rows = [
        r
        for r in rows
        if (workflow_id is None or r["workflow_id"] == workflow_id)
        and (status is None or r["status"] == status)
    ]
    rows.sort(key=lambda r: r["created_at"], reverse=True)
    return {"status": "success", "total": len(rows), "runs": rows[:limit]}


@router.get("/runs/{run_id}", response_model=RunStatusResponse)
async def get_run(run_id: str, orch: Orch) -> RunStatusResponse:
    """Status of the run and of every task, with results (wire form) and errors; as
    additions, the run's times and edges and each task's name, attempts and times."""
    return RunStatusResponse(run=run_detail(orch.get_run_log(run_id), orch.run_edges(run_id)))


@router.get("/runs/{run_id}/events")
async def get_run_events(run_id: str, orch: Orch, from_seq: int = 0) -> dict[str, object]:
    """The run's event log so far (the WebSocket's messages), from ``from_seq``."""
    run_log = orch.get_run_log(run_id)
    return {
        "status": "success",
        "finished": run_log.closed,
        "events": [e.to_message() for e in run_log.events(from_seq)],
    }


@router.get("/runs/{run_id}/results/{task_id}/{key}")
async def get_result_value(
    run_id: str, task_id: str, key: str, orch: Orch, format: str = "json"
) -> Response:
    """Output ``key`` of a finished task, in full: what a ``{"__lattice_ref__": ...}`` leaf in
    its ``finish_task`` stands for (any other output is served too).

    ``format=json`` (default): ``{"status": "success", "value": <wire value>}``.
    ``format=pickle``: the value cloudpickled (``application/octet-stream``), for Python
    clients; large values only.
    """
    if format not in ("json", "pickle"):
        raise LatticeInputError(f"format must be 'json' or 'pickle', got {format!r}")
    value = _finished_output(orch.get_run_log(run_id), task_id, key)
    if format == "pickle" and not isinstance(value, LargeValueLeaf):
        raise LatticeInputError(
            f"output {key!r} of task {task_id} is not a large value: format=pickle serves only "
            "those; format=json serves any output"
        )
    # Encoding a large value takes a while: off the event loop.
    body, media_type = await asyncio.to_thread(_render, value, format)
    return Response(body, media_type=media_type)


def _finished_output(run_log: RunLog, task_id: str, key: str) -> Any:
    task = run_log.state.tasks.get(task_id)
    if task is None:
        raise NotFoundError(f"run {run_log.run_id} has no task {task_id}")
    if task.status is not TaskStatus.COMPLETED:
        raise LatticeUsageError(
            f"task {task_id} of run {run_log.run_id} has not finished successfully"
        )
    result = task.result
    if not isinstance(result, dict) or key not in result:
        keys = sorted(result) if isinstance(result, dict) else []
        raise NotFoundError(f"task {task_id} has no output {key!r} (its outputs: {keys})")
    return result[key]


def _render(value: Any, format: str) -> tuple[bytes, str]:
    if format == "pickle":
        assert isinstance(value, LargeValueLeaf)
        raw = value.large.load()
        # A sandboxed task's value is already its pickle, opened only by the client.
        data = raw.data if type(raw) is SealedValue else cloudpickle.dumps(raw)
        return data, "application/octet-stream"
    wire = encode_value(value.large.load()) if isinstance(value, LargeValueLeaf) else value
    return json.dumps({"status": "success", "value": wire}).encode(), "application/json"


@router.post("/runs/{run_id}/cancel", response_model=StatusResponse)
async def cancel_run(run_id: str, orch: Orch) -> StatusResponse:
    """Cancel a running run: queued tasks never start, running ones are cancelled."""
    orch.cancel_run(run_id)
    return StatusResponse()


@router.post("/runs/{run_id}/tasks/{task_id}/cancel", response_model=StatusResponse)
async def cancel_task(run_id: str, task_id: str, orch: Orch) -> StatusResponse:
    """Cancel one task of a run, queued or running; the tasks that depend on it are skipped.
    404 unknown run or task, 409 the task has ended."""
    orch.cancel_task(task_id, run_id)
    return StatusResponse()


@router.delete("/runs/{run_id}", response_model=StatusResponse)
async def retire_run(run_id: str, orch: Orch) -> StatusResponse:
    """Forget a finished run and its results now rather than by the retention limit.
    A run still running is refused with 409 (cancel it first)."""
    if not orch.get_run_log(run_id).closed:
        raise LatticeUsageError(f"run {run_id} is still running; cancel it before deleting it")
    orch.retire_run(run_id)
    return StatusResponse()


@router.get("/health", response_model=HealthResponse)
async def health(orch: Orch) -> HealthResponse:
    return HealthResponse(executor=orch.executor.name, nodes=len(orch.nodes()))


@router.get("/nodes")
async def nodes(orch: Orch) -> dict[str, object]:
    """Every node: id, address, state, total and available CPU, memory, per-GPU memory."""
    return {"status": "success", "nodes": orch.nodes()}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (when the prometheus exporter is on)."""
    m = request.state.metrics
    if not m.serves_prometheus:
        raise NotFoundError("metrics are not served here (exporter is not prometheus)")
    body, content_type = m.render_prometheus(request.headers.get("accept"))
    return Response(body, media_type=content_type)
