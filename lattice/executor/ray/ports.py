"""One port range per Ray node, so that a firewall between the nodes can open exactly it."""

from __future__ import annotations

from dataclasses import dataclass

from lattice.exceptions import LatticeInputError


@dataclass(frozen=True)
class NodePorts:
    """One port range for everything a Ray node listens on, so a firewall can open just it.

    ``low``: node manager; ``low+1``: object manager; ``low+2``: runtime-env agent;
    ``low+3``/``low+4``: dashboard agent gRPC/HTTP; ``low+5``: metrics export; ``low+6``: Ray
    client server (heads only); ``low+7``: the head's connections from task hosts (see
    ray.channel; heads only); ``low+10`` to ``high``: one port per Ray worker process (and
    per driver, e.g. the head's Lattice server).
    """

    low: int
    high: int

    #: ports below low+10 are the node's fixed listeners; at least this many worker ports
    MIN_WORKER_PORTS = 16

    def __post_init__(self) -> None:
        if not 1024 <= self.low < self.high <= 65535:
            raise LatticeInputError(f"Ray node ports must be 1024-65535, got {self}")
        if self.high - self.low - 10 + 1 < self.MIN_WORKER_PORTS:
            raise LatticeInputError(
                f"Ray node ports {self.low}-{self.high} leave fewer than "
                f"{self.MIN_WORKER_PORTS} ports for worker processes; give at least "
                f"{10 + self.MIN_WORKER_PORTS} ports"
            )

    @classmethod
    def parse(cls, text: str) -> NodePorts:
        """Parse ``"LOW-HIGH"`` (e.g. ``"20000-20199"``).

        Raises:
            LatticeInputError: not two port numbers, or too narrow a range.
        """
        low, sep, high = text.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise LatticeInputError(f"Ray node ports must look like 20000-20199, got {text!r}")
        return cls(int(low), int(high))

    def flags(self, *, head: bool) -> list[str]:
        flags = [
            f"--node-manager-port={self.low}",
            f"--object-manager-port={self.low + 1}",
            f"--runtime-env-agent-port={self.low + 2}",
            f"--dashboard-agent-grpc-port={self.low + 3}",
            f"--dashboard-agent-listen-port={self.low + 4}",
            f"--metrics-export-port={self.low + 5}",
            f"--min-worker-port={self.low + 10}",
            f"--max-worker-port={self.high}",
        ]
        if head:
            flags.append(f"--ray-client-server-port={self.low + 6}")
        return flags

    @property
    def host_connections(self) -> int:
        """The port a head listens on for its task hosts' connections (see ray.channel)."""
        return self.low + 7

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"
