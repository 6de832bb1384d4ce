"""A node of the cluster and the resources it has: pure bookkeeping, no I/O."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lattice.exceptions import InvalidResourceError
from lattice.vocabulary import MB, RESOURCE_LIMITS, TaskResourceRequirements, bounded_number

_EPS = 1e-9


class NodeStatus(str, Enum):
    #: reported by Ray, not yet registered by its worker: takes no tasks until it registers or
    #: its grace period ends (see ResourceManager), but may be the node a waiting task needs
    JOINING = "joining"
    ALIVE = "alive"
    #: deregistered: takes no new tasks, lets its running tasks finish
    DRAINING = "draining"
    DEAD = "dead"


@dataclass
class GpuResource:
    gpu_id: int
    gpu_memory_total: int  # MB
    gpu_memory_available: int  # MB
    gpu_count: int = 1
    #: tasks holding this GPU: a GPU of unknown memory (0 MB) looks free by memory alone
    tasks: int = 0

    @property
    def idle(self) -> bool:
        return self.tasks == 0 and self.gpu_memory_available >= self.gpu_memory_total


@dataclass
class NodeResources:
    cpu_count: float
    memory_bytes: int
    gpu_resources: dict[int, GpuResource] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> NodeResources:
        """Parse spec/002 §5.8: ``{"cpu", "cpu_mem" (MB), "gpu_resource": {id: {...}}}``."""
        if not isinstance(data, dict):
            raise InvalidResourceError("resources must be an object")
        allowed = {"cpu", "cpu_mem", "gpu_resource"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidResourceError(
                f"unknown node resource key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        cpu = bounded_number("cpu", data.get("cpu", 0), integer=False)
        mem = bounded_number("cpu_mem", data.get("cpu_mem", 0), integer=False)
        raw_gpus = data.get("gpu_resource") or {}
        if not isinstance(raw_gpus, dict):
            raise InvalidResourceError("node resource 'gpu_resource' must be an object")
        if len(raw_gpus) > RESOURCE_LIMITS["gpu"]:
            raise InvalidResourceError(
                f"node resource 'gpu_resource' lists more than {RESOURCE_LIMITS['gpu']} GPUs"
            )
        gpus: dict[int, GpuResource] = {}
        for key, spec in raw_gpus.items():
            gpu = _gpu_from_wire(str(key), spec)
            if gpu.gpu_id in gpus:
                raise InvalidResourceError(f"gpu_resource[{key!r}]: GPU {gpu.gpu_id} listed twice")
            gpus[gpu.gpu_id] = gpu
        return cls(cpu_count=float(cpu), memory_bytes=int(mem * MB), gpu_resources=gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu_count,
            "memory_bytes": self.memory_bytes,
            "gpus": {
                str(g.gpu_id): {
                    "gpu_mem_total": g.gpu_memory_total,
                    "gpu_mem_available": g.gpu_memory_available,
                }
                for g in self.gpu_resources.values()
            },
        }


def _gpu_from_wire(key: str, spec: Any) -> GpuResource:
    """One entry of ``gpu_resource``: ``{"gpu_id", "gpu_mem" (MB), "gpu_num"}``, each bounded."""
    if not isinstance(spec, dict):
        raise InvalidResourceError(f"gpu_resource[{key!r}] must be an object")
    where = f"gpu_resource[{key!r}]"
    raw_id = spec.get("gpu_id", int(key) if key.isdigit() else None)
    gpu_id = bounded_number(f"{where}.gpu_id", raw_id, integer=True, limit=RESOURCE_LIMITS["gpu"])
    gpu_mem = bounded_number(
        f"{where}.gpu_mem", spec.get("gpu_mem", 0), integer=False, limit=RESOURCE_LIMITS["gpu_mem"]
    )
    count = bounded_number(
        f"{where}.gpu_num", spec.get("gpu_num", 1), integer=True, limit=RESOURCE_LIMITS["gpu"]
    )
    if count < 1:
        raise InvalidResourceError(f"{where}.gpu_num must be at least 1")
    return GpuResource(int(gpu_id), int(gpu_mem), int(gpu_mem), int(count))


@dataclass(frozen=True)
class SelectedNode:
    node_id: str
    node_ip: str
    gpu_ids: tuple[int, ...] = ()

    @property
    def gpu_id(self) -> int | None:
        return self.gpu_ids[0] if self.gpu_ids else None


@dataclass
class Node:
    node_id: str
    node_ip: str
    available_resources: NodeResources
    total_resources: NodeResources
    status: NodeStatus = NodeStatus.ALIVE
    #: while JOINING: the time (of the ResourceManager's clock) at which it counts as alive
    #: with what Ray reports, registered or not
    joining_until: float | None = None

    @classmethod
    def create(cls, node_id: str, node_ip: str, resources: NodeResources) -> Node:
        return cls(node_id, node_ip, copy.deepcopy(resources), copy.deepcopy(resources))

    # --- fitting ----------------------------------------------------------------------------

    def _pick_gpus(self, req: TaskResourceRequirements, pool: NodeResources) -> list[int] | None:
        if req.gpu == 0:
            return []
        if req.gpu_memory > 0:
            fits = [
                g for g in pool.gpu_resources.values() if g.gpu_memory_available >= req.gpu_memory
            ]
            # Fill the fullest GPU that still fits, keeping whole GPUs free for whole-GPU tasks.
            fits.sort(key=lambda g: (g.gpu_memory_available, g.gpu_id))
        else:
            fits = sorted(
                (g for g in pool.gpu_resources.values() if g.idle), key=lambda g: g.gpu_id
            )
        if len(fits) < req.gpu:
            return None
        return [g.gpu_id for g in fits[: req.gpu]]

    def _fits(self, req: TaskResourceRequirements, pool: NodeResources) -> list[int] | None:
        if pool.cpu_count + _EPS < req.cpu or pool.memory_bytes < req.memory_bytes:
            return None
        return self._pick_gpus(req, pool)

    def can_run_task(self, req: TaskResourceRequirements) -> bool:
        """Whether ``req`` fits in what is available now."""
        return (
            self.status is NodeStatus.ALIVE
            and self._fits(req, self.available_resources) is not None
        )

    def could_ever_run(self, req: TaskResourceRequirements) -> bool:
        """Whether ``req`` would fit this node if it were idle."""
        return self.status is NodeStatus.ALIVE and self._fits(req, self.total_resources) is not None

    def might_run(self, req: TaskResourceRequirements) -> bool:
        """Whether ``req`` could fit this joining node once its worker registers: Ray's
        figures bound the CPUs and GPUs a worker declares (it starts its Ray node with them),
        but not the GPUs' memory, which Ray does not know."""
        total = self.total_resources
        return (
            self.status is NodeStatus.JOINING
            and total.cpu_count + _EPS >= req.cpu
            and len(total.gpu_resources) >= req.gpu
        )

    def allocate_resources(self, req: TaskResourceRequirements) -> tuple[int, ...] | None:
        """Take ``req`` from what is available; return the GPU ids granted, or None."""
        if self.status is not NodeStatus.ALIVE:
            return None
        gpu_ids = self._fits(req, self.available_resources)
        if gpu_ids is None:
            return None
        avail = self.available_resources
        avail.cpu_count -= req.cpu
        avail.memory_bytes -= req.memory_bytes
        for gid in gpu_ids:
            gpu = avail.gpu_resources[gid]
            gpu.gpu_memory_available -= req.gpu_memory or gpu.gpu_memory_total
            gpu.tasks += 1
        return tuple(gpu_ids)

    def release_resources(self, req: TaskResourceRequirements, gpu_ids: tuple[int, ...]) -> None:
        avail, total = self.available_resources, self.total_resources
        avail.cpu_count = min(total.cpu_count, avail.cpu_count + req.cpu)
        avail.memory_bytes = min(total.memory_bytes, avail.memory_bytes + req.memory_bytes)
        for gid in gpu_ids:
            gpu, full = avail.gpu_resources.get(gid), total.gpu_resources.get(gid)
            if gpu is None or full is None:
                continue
            taken = req.gpu_memory or full.gpu_memory_total
            gpu.gpu_memory_available = min(full.gpu_memory_total, gpu.gpu_memory_available + taken)
            gpu.tasks = max(0, gpu.tasks - 1)

    def retotal(self, resources: NodeResources) -> None:
        """Replace the node's totals, keeping what running tasks hold allocated."""
        old_total, avail = self.total_resources, self.available_resources
        fresh = copy.deepcopy(resources)
        fresh.cpu_count -= old_total.cpu_count - avail.cpu_count
        fresh.memory_bytes -= old_total.memory_bytes - avail.memory_bytes
        for gid, gpu in fresh.gpu_resources.items():
            held = avail.gpu_resources.get(gid)
            if held is not None:
                gpu.tasks = held.tasks
                gpu.gpu_memory_available -= (
                    old_total.gpu_resources[gid].gpu_memory_total - held.gpu_memory_available
                )
        self.total_resources, self.available_resources = copy.deepcopy(resources), fresh

    def describe_total(self) -> str:
        total = self.total_resources
        text = f"cpu={total.cpu_count:g}, cpu_mem={total.memory_bytes // MB}MB"
        if total.gpu_resources:
            mems = ", ".join(f"{g.gpu_memory_total}MB" for g in total.gpu_resources.values())
            text += f", {len(total.gpu_resources)} GPU(s) [{mems}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "state": self.status.value,
            "total": self.total_resources.to_dict(),
            "available": self.available_resources.to_dict(),
        }
