"""Worker routes (spec/002 §3.3, §5.8-5.10)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lattice.api.deps import Orch
from lattice.api.models.schemas import (
    ConnectWorkerRequest,
    DisconnectWorkerRequest,
    GetRayPortResponse,
    StatusResponse,
)
from lattice.exceptions import LatticeUsageError

router = APIRouter(tags=["worker"])


def _peer(request: Request) -> str:
    # No client address (an ASGI server that gives none) is treated as no proof at all.
    return request.client.host if request.client is not None else "unknown"


@router.post("/connect_worker", response_model=StatusResponse)
async def connect_worker(
    body: ConnectWorkerRequest, request: Request, orch: Orch
) -> StatusResponse:
    """Register the caller's own node of the head's Ray cluster (see core.orchestrator
    .registration: 403 for another's node or the head's, 404 for a node not in the cluster)."""
    orch.add_worker(body.node_ip, body.node_id, body.resources, peer=_peer(request))
    return StatusResponse()


@router.post("/disconnect_worker", response_model=StatusResponse)
async def disconnect_worker(
    body: DisconnectWorkerRequest, request: Request, orch: Orch
) -> StatusResponse:
    """Stop placing tasks on the caller's node; tasks running there finish. 404 for a node
    unknown or disconnected already, 403 for the head's own node or another host's."""
    orch.remove_worker(body.node_id, peer=_peer(request))
    return StatusResponse()


@router.post("/get_head_ray_port", response_model=GetRayPortResponse)
async def get_head_ray_port(orch: Orch) -> GetRayPortResponse:
    if orch.ray_head_port is None:
        raise LatticeUsageError("this head runs no Ray head for workers; start it with --ray-port")
    return GetRayPortResponse(port=orch.ray_head_port)
