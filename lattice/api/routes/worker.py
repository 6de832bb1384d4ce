"""Worker routes (spec/002 §3.3, §5.8-5.10)."""

from __future__ import annotations

from fastapi import APIRouter

from lattice.api.deps import Orch
from lattice.api.models.schemas import (
    ConnectWorkerRequest,
    DisconnectWorkerRequest,
    GetRayPortResponse,
    StatusResponse,
)
from lattice.exceptions import LatticeUsageError

router = APIRouter(tags=["worker"])


@router.post("/connect_worker", response_model=StatusResponse)
async def connect_worker(body: ConnectWorkerRequest, orch: Orch) -> StatusResponse:
    orch.add_worker(body.node_ip, body.node_id, body.resources)
    return StatusResponse()


@router.post("/disconnect_worker", response_model=StatusResponse)
async def disconnect_worker(body: DisconnectWorkerRequest, orch: Orch) -> StatusResponse:
    """Stop placing tasks on the node; tasks running there finish."""
    orch.remove_worker(body.node_id)
    return StatusResponse()


@router.post("/get_head_ray_port", response_model=GetRayPortResponse)
async def get_head_ray_port(orch: Orch) -> GetRayPortResponse:
    if orch.ray_head_port is None:
        raise LatticeUsageError("this head runs no Ray head for workers; start it with --ray-port")
    return GetRayPortResponse(port=orch.ray_head_port)
