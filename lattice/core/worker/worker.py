"""A worker node joining a head (spec/000 §7): a Ray node of its own, registered over HTTP.

:meth:`Worker.connect_to_head` asks the head for its Ray port, starts a Ray node that joins the
head's cluster (in this process group, sharing this process's fate), measures what the machine
offers and registers it (``POST /connect_worker``, spec/002 §5.8). :meth:`Worker.start` then
blocks until :meth:`Worker.request_stop` (a signal) or until the Ray node ends by itself.
:meth:`Worker.stop` deregisters (``POST /disconnect_worker``: the head places nothing new here)
and stops the node, which Ray drains first: running tasks get ``drain_timeout`` seconds to
finish; a task still running then is lost, and the head dispatches it again elsewhere.

Ray itself stays behind :mod:`lattice.executor.ray.node`; this module never imports it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import psutil

from lattice.client.core.transport import Transport
from lattice.core.resource.manager import detect_gpus
from lattice.exceptions import LatticeError, LatticeInputError, LatticeUsageError
from lattice.executor.ray.node import START_TIMEOUT, WorkerNodeSpec
from lattice.executor.ray.ports import NodePorts
from lattice.vocabulary import MB

log = logging.getLogger(__name__)

#: the line a worker logs once the head has accepted it (tests and scripts wait for it)
READY_LINE = "lattice worker registered"
#: seconds Ray gives running tasks to finish when a worker stops (Ray's own default)
DEFAULT_DRAIN_TIMEOUT = 30.0


class WorkerNode(Protocol):
    """The Ray node a worker owns (:class:`lattice.executor.ray.node.RayWorkerNode`)."""

    def wait_ready(self, timeout: float = ...) -> None: ...

    def find_node(self) -> tuple[str, str]: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...


NodeFactory = Callable[[WorkerNodeSpec, Callable[[int], None]], WorkerNode]


def _ray_worker_node(spec: WorkerNodeSpec, on_exit: Callable[[int], None]) -> WorkerNode:
    from lattice.executor.ray.node import RayWorkerNode, align_auth_mode

    # `ray start --address` does not turn token auth on by itself; the head did if a token
    # exists. The decision goes to the child (and to find_node's driver) via RAY_AUTH_MODE.
    align_auth_mode()
    return RayWorkerNode(spec, on_exit)


def head_url(addr: str) -> str:
    """``HOST:PORT`` (or a full ``http(s)://`` URL) as the head's base URL."""
    return addr if addr.startswith(("http://", "https://")) else f"http://{addr}"


class Worker:
    """One worker node of the head at ``head_url``.

    Args:
        head_url: the head's API, ``http://HOST:PORT``; HOST must also reach the head's Ray.
        token: the head's token, if it has one.
        num_cpus, memory_mb, num_gpus, gpu_mem_mb: declare resources instead of measuring
            them (CPU cores, MB of RAM, GPUs, MB per GPU). Declared GPUs need not exist: a
            machine without any can offer some, e.g. for tests.
        node_ip: this node's address as the head should reach it (default: Ray's choice).
        node_ports: the port range of this node's Ray listeners (default: Ray's choice).
        drain_timeout: seconds running tasks get to finish when the worker stops.
        ray_temp_dir: where the Ray node keeps its sockets and logs (default: Ray's, shared
            by every Ray node of the machine; workers started at once on one machine each
            need their own).
        timeout: seconds for each HTTP call to the head.

    Raises:
        LatticeInputError: a negative resource, or a URL that is not ``http(s)://host:port``.
    """

    def __init__(
        self,
        head_url: str,
        token: str | None = None,
        *,
        num_cpus: float | None = None,
        memory_mb: int | None = None,
        num_gpus: int | None = None,
        gpu_mem_mb: int | None = None,
        node_ip: str | None = None,
        node_ports: NodePorts | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        ray_temp_dir: str | None = None,
        timeout: float = 30.0,
        start_timeout: float = START_TIMEOUT,
        node_factory: NodeFactory = _ray_worker_node,
    ) -> None:
        for name, value in (
            ("num_cpus", num_cpus),
            ("memory", memory_mb),
            ("num_gpus", num_gpus),
            ("gpu_mem", gpu_mem_mb),
            ("drain_timeout", drain_timeout),
        ):
            if value is not None and value < 0:
                raise LatticeInputError(f"worker {name} must be >= 0, got {value}")
        if num_cpus == 0:
            raise LatticeInputError("worker num_cpus must be > 0")
        self.head_url = head_url.rstrip("/")
        host = urlsplit(self.head_url).hostname
        if not host:
            raise LatticeInputError(f"head address must look like HOST:PORT, got {head_url!r}")
        self.head_host = host
        self._transport = Transport(self.head_url, timeout=timeout, token=token)
        self._num_cpus = num_cpus
        self._memory_mb = memory_mb
        self._num_gpus = num_gpus
        self._gpu_mem_mb = gpu_mem_mb
        self._node_ip = node_ip
        self._node_ports = node_ports
        self._drain_timeout = drain_timeout
        self._ray_temp_dir = ray_temp_dir
        self._start_timeout = start_timeout
        self._node_factory = node_factory
        #: the Ray NodeID and address of this worker's node, once connected
        self.node_id: str | None = None
        self.node_ip: str | None = None
        self._node: WorkerNode | None = None
        self._wake = threading.Event()
        self._node_lost = False
        self._stop_requested = False
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------------

    def connect_to_head(self) -> None:
        """Join the head's Ray cluster with a node of this machine and register it.

        Raises:
            LatticeUsageError: already connected; the head refused the token; the head runs
                no Ray head for workers.
            LatticeWorldError: the head or its Ray cannot be reached, or the node did not
                start. Nothing keeps running after an error.
        """
        if self._node is not None or self._stopped:
            raise LatticeUsageError("this worker is already connected (or was stopped)")
        try:
            ray_port = int(self._transport.post("/get_head_ray_port")["port"])
        except LatticeUsageError as exc:
            hint = ""
            if "token" in str(exc):  # the head's TokenGuard: 401
                hint = "; give the worker the head's token with --token or LATTICE_TOKEN"
            raise LatticeUsageError(f"the head refused this worker: {exc}{hint}") from exc
        resources = self._collect_resources()
        spec = WorkerNodeSpec(
            gcs_address=f"{self.head_host}:{ray_port}",
            num_cpus=float(resources["cpu"]),
            memory_bytes=int(resources["cpu_mem"]) * MB,
            num_gpus=len(resources["gpu_resource"]),
            node_ip=self._node_ip,
            node_ports=self._node_ports,
            drain_timeout=self._drain_timeout,
            temp_dir=self._ray_temp_dir,
        )
        log.info("joining the Ray cluster at %s", spec.gcs_address)
        node = self._node_factory(spec, self._on_node_exit)
        try:
            node.wait_ready(self._start_timeout)
            node_id, ray_ip = node.find_node()
            node_ip = self._node_ip or ray_ip
            self._transport.post(
                "/connect_worker", {"node_ip": node_ip, "node_id": node_id, "resources": resources}
            )
        except BaseException:
            # Interrupted or refused: the node must not outlive the attempt.
            node.stop()
            raise
        self._node, self.node_id, self.node_ip = node, node_id, node_ip
        log.info(
            "%s: node_id=%s node_ip=%s head=%s resources=%s",
            READY_LINE,
            node_id,
            node_ip,
            self.head_url,
            resources,
        )

    def start(self) -> None:
        """Connect (unless connected), then block until :meth:`request_stop` is called or the
        Ray node ends by itself (see :attr:`node_lost`). Call :meth:`stop` afterwards."""
        if self._node is None:
            self.connect_to_head()
        self._wake.wait()

    def request_stop(self) -> None:
        """Make :meth:`start` return. Safe from a signal handler."""
        self._stop_requested = True
        self._wake.set()

    def stop(self) -> None:
        """Deregister from the head, then stop the Ray node (Ray drains it: running tasks get
        ``drain_timeout`` seconds). Idempotent; a head that cannot be reached only logs."""
        if self._stopped:
            return
        self._stopped = self._stop_requested = True
        self._wake.set()
        node = self._node
        try:
            if node is not None and self.node_id is not None:
                self._deregister(self.node_id)
                log.info(
                    "stopping the Ray node; running tasks get up to %gs to finish",
                    self._drain_timeout,
                )
                node.stop()
                log.info("lattice worker stopped")
        finally:
            self._transport.close()

    def abort(self) -> None:
        """Kill the Ray node now, without draining (a second Ctrl-C during :meth:`stop`)."""
        if self._node is not None:
            log.warning("killing the Ray node without waiting for its tasks")
            self._node.kill()

    @property
    def node_lost(self) -> bool:
        """Whether the Ray node ended without being asked to (e.g. the head went away)."""
        return self._node_lost

    def _deregister(self, node_id: str) -> None:
        try:
            self._transport.post("/disconnect_worker", {"node_id": node_id})
        except LatticeError as exc:
            # The head then sees the node leave (dead) instead of draining it first.
            log.warning("could not deregister from %s: %s", self.head_url, exc)
        else:
            log.info("deregistered from %s: no new tasks are placed here", self.head_url)

    def _on_node_exit(self, code: int) -> None:
        if self._stop_requested:
            # E.g. SIGTERM to the whole process group (systemd): `ray start` drained and
            # stopped on its own while this worker was deregistering.
            log.info("the Ray node stopped (code %s)", code)
            return
        log.error("the Ray node exited unexpectedly (code %s); the worker stops", code)
        self._node_lost = True
        self._wake.set()

    # --- resources ---------------------------------------------------------------------------

    def _collect_resources(self) -> dict[str, Any]:
        """What this node offers, in the form of spec/002 §5.8.

        Measured: logical CPU cores, physical memory, NVML GPUs with their memory. Declared
        values replace them: ``num_gpus`` declares GPUs 0..N-1, each with ``gpu_mem_mb`` MB
        (or the memory NVML reports for it; 0 means whole-GPU tasks only).
        """
        detected = detect_gpus()
        cpu = self._num_cpus if self._num_cpus is not None else float(os.cpu_count() or 1)
        memory_mb = (
            self._memory_mb if self._memory_mb is not None else psutil.virtual_memory().total // MB
        )
        gpu_ids = sorted(detected) if self._num_gpus is None else list(range(self._num_gpus))
        gpus: dict[str, dict[str, int]] = {}
        for gpu_id in gpu_ids:
            if self._gpu_mem_mb is not None:
                gpu_mem = self._gpu_mem_mb
            else:
                found = detected.get(gpu_id)
                gpu_mem = found.gpu_memory_total if found is not None else 0
            gpus[str(gpu_id)] = {"gpu_id": gpu_id, "gpu_mem": gpu_mem, "gpu_num": 1}
        return {
            "cpu": int(cpu) if float(cpu).is_integer() else cpu,
            "cpu_mem": int(memory_mb),
            "gpu_resource": gpus,
        }
