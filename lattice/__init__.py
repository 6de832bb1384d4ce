"""Lattice: a task-level distributed runtime for LLM-agent workflows.

The public surface is what ``__all__`` lists; everything else is internal.
"""

__version__ = "0.1.0"

from lattice.client.core.client import LatticeClient
from lattice.client.core.decorator import task
from lattice.client.core.models import LatticeTask, TaskOutput
from lattice.client.core.transport import ReconnectPolicy
from lattice.client.core.workflow import LatticeWorkflow
from lattice.client.langgraph.client import LangGraphClient
from lattice.context import TaskContext
from lattice.exceptions import (
    CycleError,
    InvalidCodeError,
    InvalidReferenceError,
    InvalidResourceError,
    LatticeConnectionError,
    LatticeError,
    LatticeInputError,
    LatticeServerError,
    LatticeTimeoutError,
    LatticeUsageError,
    LatticeWorldError,
    NotFoundError,
    RunCancelledError,
    RunNotFoundError,
    TaskErrorInfo,
    TaskFailedError,
    TaskNotFoundError,
    TaskSkippedError,
    WorkflowNotFoundError,
)
from lattice.vocabulary import TaskAttempt, current_attempt

__all__ = [
    "CycleError",
    "InvalidCodeError",
    "InvalidReferenceError",
    "InvalidResourceError",
    "LangGraphClient",
    "LatticeClient",
    "LatticeConnectionError",
    "LatticeError",
    "LatticeInputError",
    "LatticeServerError",
    "LatticeTask",
    "LatticeTimeoutError",
    "LatticeUsageError",
    "LatticeWorkflow",
    "LatticeWorldError",
    "NotFoundError",
    "ReconnectPolicy",
    "RunCancelledError",
    "RunNotFoundError",
    "TaskAttempt",
    "TaskContext",
    "TaskErrorInfo",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskOutput",
    "TaskSkippedError",
    "WorkflowNotFoundError",
    "__version__",
    "current_attempt",
    "task",
]
