"""What is queued and why: the view behind ``GET /queue/status`` and ``/queue/details``.

Built on demand on the scheduler thread from the core's state (``SchedulerCore.queue_view``)
and handed to the event loop whole: plain values, nothing shared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from lattice.core.resource.node import Node, NodeStatus
from lattice.vocabulary import MB, Priority, TaskResourceRequirements


class QueueState(str, Enum):
    #: upstream tasks have not all finished
    WAITING_FOR_INPUTS = "waiting_for_inputs"
    #: ready, but no node has room for what it asks
    WAITING_FOR_RESOURCES = "waiting_for_resources"
    #: collected into a batch that is not due yet
    IN_BATCH = "in_batch"
    RUNNING = "running"


@dataclass(frozen=True)
class QueuedTask:
    run_id: str
    workflow_id: str
    task_id: str
    task_name: str
    #: as declared (a level number) and its name
    priority: int
    #: after aging (see scheduler.pending)
    effective_priority: int
    state: QueueState
    #: seconds since it became ready (0 while it waits for inputs)
    waited: float
    requested: dict[str, Any]
    #: why it is not running yet (None when it runs)
    reason: str | None
    node_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        out["priority_name"] = Priority(self.priority).name.lower()
        return out


@dataclass(frozen=True)
class QueueView:
    tasks: tuple[QueuedTask, ...]

    def status(self) -> dict[str, Any]:
        """Counts by priority name and by state (every name present, zeros included)."""
        by_priority = {p.name.lower(): 0 for p in Priority}
        by_state = {s.value: 0 for s in QueueState}
        for task in self.tasks:
            by_priority[Priority(task.priority).name.lower()] += 1
            by_state[task.state.value] += 1
        return {"total": len(self.tasks), "by_priority": by_priority, "by_state": by_state}


def why_no_room(requirements: TaskResourceRequirements, nodes: list[Node]) -> str:
    """Which resource no node has free for ``requirements``, node by node."""
    alive = [n for n in nodes if n.status is NodeStatus.ALIVE]
    if not alive:
        return "no node is alive"
    parts = []
    for node in alive:
        free = node.available_resources
        short = []
        if free.cpu_count < requirements.cpu:
            short.append(f"{free.cpu_count:g} of cpu={requirements.cpu:g} free")
        if free.memory_bytes < requirements.memory_bytes:
            short.append(
                f"{free.memory_bytes // MB} of cpu_mem={requirements.memory_bytes // MB}MB free"
            )
        if requirements.gpu:
            fit = [
                g
                for g in free.gpu_resources.values()
                if g.gpu_memory_available >= requirements.gpu_memory
            ]
            if len(fit) < requirements.gpu:
                short.append(f"{len(fit)} of gpu={requirements.gpu} with room")
        parts.append(f"{node.node_id}: " + (", ".join(short) or "busy"))
    return f"waits for {requirements.describe()}; " + "; ".join(parts)
