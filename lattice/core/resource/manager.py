"""ResourceManager: the one authority on where a task runs (DESIGN decision 3).

Not thread-safe on purpose: only the scheduler thread calls it. Read-only snapshots for the
API (``GET /nodes``) are taken through ``snapshot()``, which the scheduler publishes.

Joining nodes. A worker's Ray node is in the cluster a few seconds before the worker registers
what it offers (``/connect_worker``: its declared GPUs and their memory, which Ray does not
know). A node Ray reports that has not registered is ``JOINING``: it takes no tasks, and a task
that only it might hold waits instead of failing as impossible, until the node registers or
``join_grace`` seconds pass. Then it counts as alive with what Ray reports (a plain ``ray start
--address`` node never registers). Ray's head node is alive at once: nobody registers it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from lattice.core.resource.node import GpuResource, Node, NodeResources, NodeStatus, SelectedNode
from lattice.exceptions import NodeNotFoundError
from lattice.vocabulary import TaskResourceRequirements

log = logging.getLogger(__name__)

LOCAL_NODE_ID = "local"
#: seconds a node Ray reports has to register before it counts with Ray's figures
#: (``lattice start --head --join-grace``)
DEFAULT_JOIN_GRACE = 30.0
#: the resource Ray gives its head node only
_RAY_HEAD_RESOURCE = "node:__internal_head__"


def detect_gpus() -> dict[int, GpuResource]:
    """GPUs visible through NVML, or none. NVML is optional (``nvidia-ml-py``)."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable, no GPUs detected: %s", exc)
        return {}
    try:
        gpus: dict[int, GpuResource] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            mb = int(info.total // (1024 * 1024))
            gpus[i] = GpuResource(i, mb, mb, 1)
        return gpus
    finally:
        pynvml.nvmlShutdown()


def local_resources() -> NodeResources:
    """What this machine has: CPU cores, RAM, NVML GPUs."""
    return NodeResources(
        cpu_count=float(os.cpu_count() or 1),
        memory_bytes=int(psutil.virtual_memory().total),
        gpu_resources=detect_gpus(),
    )


class ResourceManager:
    """Args:
    join_grace: seconds a node Ray reports may stay unregistered (``JOINING``) before
        it counts as alive with Ray's figures.
    clock: the time source for that grace (seconds, monotonic); tests give their own.
    """

    def __init__(
        self,
        join_grace: float = DEFAULT_JOIN_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nodes: dict[str, Node] = {}
        self._head_node_id: str | None = None
        self.join_grace = join_grace
        self._clock = clock

    # --- membership -------------------------------------------------------------------------

    def initialize_local(self, resources: NodeResources | None = None) -> None:
        """One node: this machine (or the resources given, e.g. declared by flags)."""
        self.add_node(LOCAL_NODE_ID, "127.0.0.1", resources or local_resources())
        self._head_node_id = LOCAL_NODE_ID

    def initialize_with_ray(self, ray_nodes: Iterable[dict[str, Any]]) -> None:
        """Register the alive nodes of a Ray cluster, as ``ray.nodes()`` describes them.

        GPUs are taken from ``ray_nodes``' ``GPU`` count; their memory from NVML when the node
        is this machine, else ``0`` (whole-GPU tasks only) until a worker registers its own.
        Every node but Ray's head starts ``JOINING`` (see the module docstring); a node
        already known keeps what it has.
        """
        local_ip = _local_ip()
        ray_nodes = list(ray_nodes)
        marked_head = any(_RAY_HEAD_RESOURCE in n.get("Resources", {}) for n in ray_nodes)
        for info in ray_nodes:
            if not info.get("Alive", True):
                continue
            res = info.get("Resources", {})
            node_ip = info.get("NodeManagerAddress", "127.0.0.1")
            gpus: dict[int, GpuResource] = {}
            n_gpu = int(res.get("GPU", 0))
            if n_gpu:
                nvml = detect_gpus() if node_ip in (local_ip, "127.0.0.1") else {}
                gpus = {i: nvml.get(i, GpuResource(i, 0, 0, 1)) for i in range(n_gpu)}
            resources = NodeResources(
                cpu_count=float(res.get("CPU", 0)),
                memory_bytes=int(res.get("memory", 0)),
                gpu_resources=gpus,
            )
            node_id = str(info["NodeID"])
            existing = self._nodes.get(node_id)
            if existing is not None and existing.status is not NodeStatus.DEAD:
                continue  # registered (or joining) already: Ray's figures add nothing
            is_head = _RAY_HEAD_RESOURCE in res if marked_head else self._head_node_id is None
            self._nodes[node_id] = node = Node.create(node_id, node_ip, resources)
            if is_head:
                self._head_node_id = self._head_node_id or node_id
            else:
                node.status = NodeStatus.JOINING
                node.joining_until = self._clock() + self.join_grace
                log.info(
                    "node %s (%s) is in the Ray cluster; it counts as joining until it "
                    "registers, or for %gs",
                    node_id,
                    node_ip,
                    self.join_grace,
                )

    def add_node(self, node_id: str, node_ip: str, resources: NodeResources) -> None:
        """Add a node, or update one that registers again (e.g. a worker declaring the GPUs
        Ray discovery could not measure): what its running tasks hold stays allocated."""
        existing = self._nodes.get(node_id)
        if existing is None or existing.status is NodeStatus.DEAD:
            self._nodes[node_id] = Node.create(node_id, node_ip, resources)
            return
        existing.node_ip = node_ip
        existing.status = NodeStatus.ALIVE
        existing.joining_until = None
        existing.retotal(resources)

    def remove_node(self, node_id: str) -> None:
        """Forget a node outright."""
        if self._nodes.pop(node_id, None) is None:
            raise NodeNotFoundError(node_id)

    def drain_node(self, node_id: str) -> None:
        """Stop placing tasks on ``node_id``; tasks running there finish."""
        node = self._get(node_id)
        if node.status in (NodeStatus.ALIVE, NodeStatus.JOINING):
            node.status = NodeStatus.DRAINING
            node.joining_until = None

    def mark_dead(self, node_id: str) -> None:
        self._get(node_id).status = NodeStatus.DEAD

    def check_node_health(self, alive_node_ids: Iterable[str]) -> list[str]:
        """Mark every live node missing from ``alive_node_ids`` dead; return their ids."""
        alive = set(alive_node_ids)
        dead = [
            n.node_id
            for n in self._nodes.values()
            if n.status is not NodeStatus.DEAD and n.node_id not in alive
        ]
        for node_id in dead:
            self._nodes[node_id].status = NodeStatus.DEAD
        return dead

    # --- placement --------------------------------------------------------------------------

    def select_node(
        self, requirements: TaskResourceRequirements, avoid: frozenset[str] = frozenset()
    ) -> SelectedNode | None:
        """Allocate ``requirements`` on the best node that has room now, or return None.

        Nodes in ``avoid`` are taken only when no other node could ever hold the task; while
        another one could, the task waits for it rather than go to an avoided node.
        """
        self._settle_joining()
        candidates = [n for n in self._nodes.values() if n.can_run_task(requirements)]
        if avoid:
            preferred = [n for n in candidates if n.node_id not in avoid]
            if preferred or any(
                n.node_id not in avoid and n.could_ever_run(requirements)
                for n in self._nodes.values()
            ):
                candidates = preferred
        if not candidates:
            return None
        # Keep GPU nodes for GPU work; among equals, the node with the most CPU free.
        candidates.sort(
            key=lambda n: (
                bool(n.total_resources.gpu_resources) and requirements.gpu == 0,
                -n.available_resources.cpu_count,
                n.node_id,
            )
        )
        node = candidates[0]
        gpu_ids = node.allocate_resources(requirements)
        assert gpu_ids is not None  # can_run_task said it fits
        return SelectedNode(node.node_id, node.node_ip, gpu_ids)

    def can_ever_fit(self, requirements: TaskResourceRequirements) -> bool:
        """Whether some node could hold ``requirements`` when idle, counting a joining node
        as able while it might be (see :meth:`Node.might_run`) until its grace ends. False
        means the task can only fail."""
        self._settle_joining()
        return any(
            n.could_ever_run(requirements) or n.might_run(requirements)
            for n in self._nodes.values()
        )

    def next_join_deadline(self) -> float | None:
        """When the earliest grace of a joining node ends (the clock's time), or None: the
        moment a task waiting only for joining nodes must be looked at again."""
        deadlines = [
            n.joining_until
            for n in self._nodes.values()
            if n.status is NodeStatus.JOINING and n.joining_until is not None
        ]
        return min(deadlines, default=None)

    def _settle_joining(self) -> None:
        """Joining nodes whose grace has ended count as alive, with what Ray reports."""
        now = self._clock()
        for node in self._nodes.values():
            if (
                node.status is NodeStatus.JOINING
                and node.joining_until is not None
                and node.joining_until <= now
            ):
                node.status, node.joining_until = NodeStatus.ALIVE, None
                log.warning(
                    "node %s (%s) did not register within %gs; it counts with what Ray reports: %s",
                    node.node_id,
                    node.node_ip,
                    self.join_grace,
                    node.describe_total(),
                )

    def explain_never_fits(self, requirements: TaskResourceRequirements) -> str:
        alive = [n for n in self._nodes.values() if n.status is NodeStatus.ALIVE]
        if not alive:
            return f"task asks for {requirements.describe()} but no node is alive"
        largest = max(
            alive, key=lambda n: (n.total_resources.cpu_count, n.total_resources.memory_bytes)
        )
        return (
            f"task asks for {requirements.describe()}, which no node can ever provide; "
            f"the largest node ({largest.node_id}) has {largest.describe_total()}"
        )

    def claim(self, node: SelectedNode, requirements: TaskResourceRequirements) -> bool:
        """Allocate ``requirements`` on ``node`` itself (a task already placed there); False
        if the node is gone, not taking tasks, or full."""
        found = self._nodes.get(node.node_id)
        return found is not None and found.allocate_resources(requirements) is not None

    def release_task_resources(
        self, node_id: str, requirements: TaskResourceRequirements, gpu_ids: tuple[int, ...] = ()
    ) -> None:
        node = self._nodes.get(node_id)
        if node is not None:  # a removed node's resources are simply gone
            node.release_resources(requirements, gpu_ids)

    # --- reading ----------------------------------------------------------------------------

    @property
    def head_node_id(self) -> str | None:
        return self._head_node_id

    def get_node(self, node_id: str) -> Node:
        return self._get(node_id)

    def nodes(self) -> list[Node]:
        self._settle_joining()
        return list(self._nodes.values())

    def snapshot(self) -> list[dict[str, Any]]:
        self._settle_joining()
        return [n.to_dict() for n in self._nodes.values()]

    def _get(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise NodeNotFoundError(node_id) from None


def _local_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
