"""Beyond spec/002: read runs over plain HTTP, cancel or retire them; health, nodes, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from lattice.api.deps import Orch
from lattice.api.models.schemas import HealthResponse, RunStatusResponse, StatusResponse
from lattice.exceptions import LatticeUsageError, NotFoundError

router = APIRouter(tags=["runs"])


@router.get("/runs/{run_id}", response_model=RunStatusResponse)
async def get_run(run_id: str, orch: Orch) -> RunStatusResponse:
    """Status of the run and of every task, with results (wire form) and errors."""
    return RunStatusResponse(run=orch.get_run_log(run_id).summary())


@router.get("/runs/{run_id}/events")
async def get_run_events(run_id: str, orch: Orch, from_seq: int = 0) -> dict[str, object]:
    """The run's event log so far (the WebSocket's messages), from ``from_seq``."""
    run_log = orch.get_run_log(run_id)
    return {
        "status": "success",
        "finished": run_log.closed,
        "events": [e.to_message() for e in run_log.events(from_seq)],
    }


@router.post("/runs/{run_id}/cancel", response_model=StatusResponse)
async def cancel_run(run_id: str, orch: Orch) -> StatusResponse:
    """Cancel a running run: queued tasks never start, running ones are cancelled."""
    orch.cancel_run(run_id)
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
