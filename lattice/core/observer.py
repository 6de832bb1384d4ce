"""Engine events for cross-cutting concerns (metrics, logging), as one observer.

The engine calls these hooks at the moments they name; an observer must be cheap and
thread-safe (task hooks run on the scheduler thread, run hooks on the server's event loop).
The default does nothing, so the engine never checks whether one is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeGauge:
    """What one node has free right now."""

    node_id: str
    cpu_available: float
    memory_available_bytes: int
    #: gpu id -> MB free
    gpu_memory_available_mb: dict[int, int]
    alive: bool


class EngineObserver:
    """Base observer: every hook is a no-op. Subclass and override what you need."""

    def workflow_created(self, workflow_id: str) -> None:
        """A workflow was created."""

    def run_started(self, run_id: str, workflow_id: str) -> None:
        """A run of a workflow began."""

    def run_finished(self, run_id: str, workflow_id: str, outcome: str) -> None:
        """A run ended; ``outcome`` is ``completed``, ``failed`` or ``cancelled``."""

    def task_submitted(self, task_name: str, node_id: str, queued_seconds: float) -> None:
        """A task left the queue for a node after waiting ``queued_seconds``."""

    def task_completed(self, task_name: str, node_id: str, duration_seconds: float) -> None:
        """A task finished successfully after running ``duration_seconds``."""

    def task_failed(self, task_name: str, node_id: str, duration_seconds: float) -> None:
        """A task raised (or could not be placed: ``node_id`` is then empty)."""

    def task_cancelled(self, task_name: str, node_id: str) -> None:
        """A queued or running task was cancelled (``node_id`` empty if it was queued)."""

    def pending_changed(self, pending: int) -> None:
        """The number of tasks waiting for resources changed."""

    def nodes_changed(self, nodes: Sequence[NodeGauge]) -> None:
        """Free resources per node changed (after a placement, a release, a node event)."""
