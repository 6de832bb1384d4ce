"""Build the executor a server was configured with."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from lattice.core.resource.manager import DEFAULT_JOIN_GRACE
from lattice.exceptions import LatticeInputError, LatticeUsageError
from lattice.executor.base import ExecutorBackend
from lattice.executor.local_executor import LocalExecutor
from lattice.executor.ray.ports import NodePorts
from lattice.executor.sandbox.runner import SandboxRunner


class ExecutorType(str, Enum):
    RAY = "ray"
    LOCAL = "local"


def create_executor(
    executor_type: ExecutorType | str,
    *,
    ray_address: str | None = None,
    ray_port: int | None = None,
    ray_node_ports: NodePorts | None = None,
    num_cpus: float | None = None,
    sandbox: SandboxRunner | None = None,
    join_grace: float | None = None,
    state_dir: Path | None = None,
) -> ExecutorBackend:
    """Return an executor of ``executor_type``, not yet initialized.

    ``ray_address`` joins an existing Ray cluster; ``ray_port`` starts a Ray head other nodes
    can join (its Ray node listening on ``ray_node_ports``, if given); neither starts a
    private local Ray. ``join_grace``: see RayExecutor. ``num_cpus`` sizes the Ray node this
    process starts (the local executor's concurrency is bounded by the ResourceManager
    instead). ``state_dir``: the head's data directory, where a Ray head it starts is
    recorded (leftovers of a killed head are stopped by the next one).

    Raises:
        LatticeInputError: unknown ``executor_type``.
        LatticeUsageError: Ray options given for the local executor; Ray not installed.
    """
    try:
        kind = ExecutorType(executor_type)
    except ValueError:
        allowed = ", ".join(t.value for t in ExecutorType)
        raise LatticeInputError(
            f"unknown executor type {executor_type!r}; allowed: {allowed}"
        ) from None
    if kind is ExecutorType.LOCAL:
        if ray_address is not None or ray_port is not None or ray_node_ports is not None:
            raise LatticeUsageError(
                "ray_address, ray_port and ray_node_ports only apply to the Ray executor"
            )
        return LocalExecutor(sandbox=sandbox)
    # Imported here so that Lattice without Ray works, and `import lattice` stays light.
    from lattice.executor.ray.executor import RayExecutor

    if ray_node_ports is not None and ray_port is None:
        raise LatticeUsageError(
            "ray_node_ports applies to a Ray head this server starts (ray_port)"
        )
    return RayExecutor(
        address=ray_address,
        num_cpus=num_cpus,
        ray_port=ray_port,
        sandbox=sandbox,
        node_ports=ray_node_ports,
        join_grace=DEFAULT_JOIN_GRACE if join_grace is None else join_grace,
        state_dir=state_dir,
    )
