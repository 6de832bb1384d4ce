"""Server settings: one value object, built by the CLI from flags and the environment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from lattice.core.store.factory import check_store_spec
from lattice.exceptions import LatticeUsageError
from lattice.executor.ray.ports import NodePorts
from lattice.vocabulary import SandboxSpec

DEFAULT_PORT = 8000
DEFAULT_RAY_PORT = 6379
#: request bodies larger than this are refused with 413 (code and inputs travel inline)
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: code (serialized and source) one workflow may hold, all its tasks together
DEFAULT_MAX_WORKFLOW_CODE_BYTES = 128 * 1024 * 1024
#: seconds a request body may take to arrive in full
DEFAULT_BODY_TIMEOUT = 30.0
#: seconds an idle keep-alive connection stays open
DEFAULT_IDLE_TIMEOUT = 5.0
#: the shortest token accepted: guessing 16 random characters is out of reach
MIN_TOKEN_LENGTH = 16
#: how to make a good token, for the message that refuses a short one
MAKE_TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
#: seconds a finished run is kept at most (a week)
DEFAULT_MAX_RUN_AGE = 7 * 24 * 3600.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: "ray" or "local"
    executor: str = "ray"
    #: start a Ray head on this GCS port (for workers to join); None: a private local Ray
    ray_port: int | None = None
    #: join an existing Ray cluster instead of starting one
    ray_address: str | None = None
    #: the port range of the Ray head's node listeners (None: ports Ray picks)
    ray_node_ports: NodePorts | None = None
    num_cpus: float | None = None
    #: shared secret for every request; required when binding a non-loopback address
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    #: Host names the head answers to besides its own (a loopback head: loopback names only)
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_workflow_code_bytes: int = DEFAULT_MAX_WORKFLOW_CODE_BYTES
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: finished runs kept for reading results; the oldest beyond this are retired
    max_finished_runs: int = 1000
    #: finished runs older than this many seconds are retired too (None: kept by count only)
    max_run_age: float | None = DEFAULT_MAX_RUN_AGE
    #: dispatches of a task whose node died, before its run fails
    max_attempts: int = 3
    #: seconds a queued task waits per priority level it gains (0: no aging)
    priority_aging: float = 30.0
    #: seconds a node Ray reports may stay unregistered before it counts with Ray's figures
    #: (tasks only it might hold wait meanwhile; docs/distributed.md, Joining nodes)
    join_grace: float = 30.0
    #: where workflows and runs are kept: "memory" or "sqlite:///PATH" (``lattice start``
    #: defaults to SQLite in its data directory; see core.store.factory)
    store: str = "memory"
    #: the head's data directory (``lattice start`` sets it): its store by default, and the
    #: record of the Ray head it starts; None: no record is kept
    data_dir: str | None = None
    sandbox: SandboxSpec = field(default_factory=SandboxSpec)
    metrics_enabled: bool = True
    metrics_exporter: str = "prometheus"
    metrics_endpoint: str | None = None

    def check(self) -> None:
        """Refuse settings that would be unsafe or cannot work, saying why."""
        if self.executor not in ("ray", "local"):
            raise LatticeUsageError(f"executor must be 'ray' or 'local', got {self.executor!r}")
        if not is_loopback(self.host) and not self.token:
            raise LatticeUsageError(
                f"refusing to listen on {self.host} without a token: anyone who reaches the port "
                "could run code here. Pass --token or set LATTICE_TOKEN."
            )
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise LatticeUsageError(
                f"the token must be at least {MIN_TOKEN_LENGTH} characters long (got "
                f"{len(self.token)}); make one with: {MAKE_TOKEN_HINT}"
            )
        for origin in self.cors_origins:
            if origin.strip() in ("*", "null"):
                raise LatticeUsageError(
                    f"--cors-origin {origin.strip()!r} would let any web page (or a sandboxed "
                    "one) use this head with the user's credentials; list the origins of the "
                    "pages that may, e.g. --cors-origin https://dashboard.example"
                )
        for name, value in (
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
        ):
            if not value > 0:
                raise LatticeUsageError(f"{name} must be > 0 seconds, got {value}")
        if self.max_workflow_code_bytes < 1:
            raise LatticeUsageError("max_workflow_code_bytes must be >= 1")
        if self.max_attempts < 1:
            raise LatticeUsageError("max_attempts must be >= 1")
        if not self.priority_aging >= 0:
            raise LatticeUsageError(
                f"priority_aging (--priority-aging) must be >= 0 seconds, got {self.priority_aging}"
            )
        if self.join_grace < 0:
            raise LatticeUsageError("join_grace must be >= 0 seconds")
        check_store_spec(self.store)
        if self.max_run_age is not None and not self.max_run_age > 0:
            raise LatticeUsageError(f"max_run_age must be > 0 seconds, got {self.max_run_age}")
        if self.ray_node_ports is not None and (self.executor != "ray" or self.ray_port is None):
            raise LatticeUsageError(
                "ray_node_ports (--ray-node-ports) applies to the Ray head this server starts "
                "(--executor ray with --ray-port), not to --executor local or --ray-address"
            )
