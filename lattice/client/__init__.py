from lattice.client.core.client import LatticeClient
from lattice.client.core.decorator import task
from lattice.client.core.models import LatticeTask, TaskOutput
from lattice.client.core.workflow import LatticeWorkflow

__all__ = ["LatticeClient", "LatticeTask", "LatticeWorkflow", "TaskOutput", "task"]
