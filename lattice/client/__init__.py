from lattice.client.core.client import LatticeClient
from lattice.client.core.decorator import task
from lattice.client.core.models import LatticeTask, TaskOutput
from lattice.client.core.transport import ReconnectPolicy
from lattice.client.core.workflow import LatticeWorkflow
from lattice.client.langgraph.client import LangGraphClient

__all__ = [
    "LangGraphClient",
    "LatticeClient",
    "LatticeTask",
    "LatticeWorkflow",
    "ReconnectPolicy",
    "TaskOutput",
    "task",
]
