"""One exception tree for Lattice, split by audience.

``LatticeError``
  ``LatticeInputError``    your input was wrong (bad resource key, cycle, unknown id, ...)
  ``LatticeUsageError``    you used the API out of order (e.g. results of a run never started)
  ``LatticeWorldError``    the world broke (server unreachable, connection lost, timed out)
  ``TaskFailedError``      a task's own code raised; carries the remote type, message, traceback

The server maps ``NotFoundError`` to HTTP 404 and the other input errors to 400, so a
message raised in ``core/`` reaches the client unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LatticeError(Exception):
    """Root of every error Lattice raises on purpose."""


# --- your input was wrong -------------------------------------------------------------------


class LatticeInputError(LatticeError, ValueError):
    """The caller passed something Lattice cannot accept; nothing was changed."""


class InvalidResourceError(LatticeInputError):
    """A resource request has an unknown key or an impossible value."""


class CycleError(LatticeInputError):
    """Adding an edge would close a cycle; the edge was rolled back."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("edge would create a cycle: " + " -> ".join(cycle))


class InvalidReferenceError(LatticeInputError):
    """An input refers to a task or output key that does not exist."""


class InvalidCodeError(LatticeInputError):
    """Serialized code could not be decoded."""


class NotFoundError(LatticeInputError, LookupError):
    """An id names nothing the server knows."""


class WorkflowNotFoundError(NotFoundError):
    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"Workflow {workflow_id} not found")


class TaskNotFoundError(NotFoundError):
    def __init__(self, task_id: str, workflow_id: str) -> None:
        self.task_id = task_id
        self.workflow_id = workflow_id
        super().__init__(f"Task {task_id} not found in workflow {workflow_id}")


class RunNotFoundError(NotFoundError):
    def __init__(self, run_id: str, workflow_id: str | None = None) -> None:
        self.run_id = run_id
        where = f" of workflow {workflow_id}" if workflow_id else ""
        super().__init__(f"Run {run_id}{where} not found")


class NodeNotFoundError(NotFoundError):
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"Node {node_id} not found")


class ForbiddenError(LatticeInputError):
    """The request is well formed but no client may make it (disconnecting the head's own
    node, registering a node as someone else); nothing was changed."""


class TooLargeError(LatticeInputError):
    """Accepting the request would exceed a size limit of the server (413)."""


# --- you used it wrong ----------------------------------------------------------------------


class LatticeUsageError(LatticeError, RuntimeError):
    """The API was used out of order or after it was closed."""


class OrchestratorNotInitializedError(LatticeUsageError):
    def __init__(self) -> None:
        super().__init__("Orchestrator not initialized")


# --- the world broke ------------------------------------------------------------------------


class LatticeWorldError(LatticeError, ConnectionError):
    """Something outside the caller's control failed: network, server, cluster."""


class LatticeConnectionError(LatticeWorldError):
    """The server at a URL could not be reached or answered garbage."""


class LatticeTimeoutError(LatticeWorldError, TimeoutError):
    """A wait ran past its timeout."""


class StoreError(LatticeWorldError):
    """The head's store cannot be read or written (a damaged file, a full disk, a schema from a
    newer Lattice)."""


class LatticeServerError(LatticeWorldError):
    """The server answered with an error status."""

    def __init__(self, message: str, status_code: int, detail: Any = None) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(message)


# --- a task failed --------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskErrorInfo:
    """A task's failure as data: what travels from worker to server to client."""

    type: str
    message: str
    traceback: str
    # cloudpickled exception (base64), when the original object could be pickled; lets a
    # Python client re-raise the very type the task raised.
    pickled: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }
        if self.pickled is not None:
            out["pickled"] = self.pickled
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskErrorInfo:
        return cls(
            type=str(data.get("type", "Exception")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
            pickled=data.get("pickled"),
        )

    @classmethod
    def framework(cls, exc_type: str, message: str) -> TaskErrorInfo:
        """An error raised by Lattice itself about a task (no user traceback)."""
        return cls(type=exc_type, message=message, traceback="")


class TaskFailedError(LatticeError):
    """A task's code raised. ``error`` holds the remote type, message and traceback."""

    def __init__(self, task: str, error: TaskErrorInfo) -> None:
        self.task = task
        self.error = error
        text = f"task {task} failed: {error.type}: {error.message}"
        if error.traceback:
            text += "\n\nRemote traceback:\n" + error.traceback
        super().__init__(text)


class TaskSkippedError(LatticeError):
    """A task did not run because a task it depends on failed or was cancelled."""


class RunCancelledError(LatticeError):
    """The run was cancelled before this result was produced."""
