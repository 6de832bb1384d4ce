"""The Ray node processes Lattice owns: a head's ``ray start --head`` and a worker's
``ray start --address``.

Each is one ``ray start ... --block`` child. With ``--block`` that process stays up as the
parent of its node's GCS, raylet and helpers, gives each of them ``PR_SET_PDEATHSIG`` (so they
die with it), and stops all of them when it gets SIGTERM. So stopping this one process (and
waiting for its descendants) stops exactly the node we started, where ``ray stop`` would kill
every Ray process of this user on the machine (another cluster, another test run).

Ray is imported lazily here (only :meth:`RayWorkerNode.find_node` needs it), so the worker CLI
and ``lattice.core.worker`` can import this module cheaply.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lattice.exceptions import LatticeUsageError, LatticeWorldError
from lattice.executor.ray.leftovers import forget, remember, stop_leftovers
from lattice.executor.ray.ports import NodePorts

logger = logging.getLogger(__name__)

#: seconds a ``ray start`` may take to print that its node is up
START_TIMEOUT = 120.0
#: Ray drains a node for up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S on SIGTERM, then gives its
#: processes a few seconds each; a stop waits this much longer than the drain before killing
_STOP_MARGIN = 30.0
#: Ray's default RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, which heads keep
_RAY_DEFAULT_DRAIN = 30.0
#: Ray's record-style log lines: "<date> <time>\tLEVEL file.py:line -- message"
_RAY_LOG_LEVEL = re.compile(r"\t(DEBUG|INFO|SUCC|WARNING|ERROR|CRITICAL) ")
#: Ray's own chatter (INFO, SUCC) stays at debug level in Lattice's log
_LOG_LEVELS = {"WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.ERROR}
_DRAIN_ENV = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Ray starts its workers at nice 15 so that its own daemons stay responsive. Here the workers
#: run the tasks, which must not yield the CPU to everything else on the node; Lattice runs
#: them at 0, like the code they replace (see RayExecutor). An explicit value still wins.
_NICENESS_ENV = "RAY_worker_niceness"

#: How fast the head's GCS declares a silent node dead. Ray's defaults (a check every 3 s, dead
#: after 5 misses) take ~15 s; Lattice re-dispatches a dead node's tasks only once Ray gives up
#: on it, so the head checks every second and gives up after 3 misses: a killed node is dead
#: after ~3 s, one cut off (each check then waits out its 1 s timeout) after ~7-10 s. Values
#: the user sets in the environment win.
HEALTH_CHECK_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

#: the custom resource that lets a worker find its own node among ``ray.nodes()``
NODE_RESOURCE_PREFIX = "lattice_node_"


def align_auth_mode() -> None:
    """Make this process (and its children) use the Ray token-auth mode of ``ray start``.

    ``ray start --head`` turns token auth on when a token exists (~/.ray/auth_token,
    RAY_AUTH_TOKEN), but ``ray.init`` with an explicit address and ``ray start --address`` do
    not, and would then be refused by the head. Running Ray's own rule here first exports the
    decision (RAY_AUTH_MODE) to all of them.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token auth: nothing to align
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


# --- one `ray start --block` ----------------------------------------------------------------


def _prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux, resolved in the parent (nothing may be loaded after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return fn


_PR_SET_PDEATHSIG = 1


def _fate_sharing_preexec() -> Callable[[], None]:
    """What a worker's ``ray start`` runs between fork and exec.

    * SIGINT ignored: Ctrl-C in the worker's terminal reaches its whole process group, and the
      worker answers it by deregistering and then draining the node; ``ray start`` must not
      tear the node down on its own meanwhile. (The ignore survives exec; Python then installs
      no KeyboardInterrupt handler.)
    * PR_SET_PDEATHSIG(SIGKILL): if the worker process dies without stopping it (kill -9 of
      the worker alone), ``ray start`` dies too, and takes its node with it.
    """
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the worker died before the death signal was armed
                os._exit(1)

    return preexec


class _RayStart:
    """A ``ray start ... --block`` child and everything it started.

    ``own_session``: a head gets its own session, so that Ctrl-C in the server's terminal
    reaches the server only, which then stops the head in order. A worker's node stays in the
    worker's process group instead, so ``kill -9 -PGID`` of the worker takes it down too.
    """

    _READY_MARK = "Ray runtime started."

    def __init__(
        self,
        what: str,
        args: list[str],
        env: dict[str, str],
        *,
        own_session: bool,
        drain_timeout: float | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.what = what
        self._on_exit = on_exit
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", *args]
        cmd += ["--block", "--disable-usage-stats", "--log-style=record", "--log-color=false"]
        env = dict(env)
        if drain_timeout is not None:
            env[_DRAIN_ENV] = f"{drain_timeout:g}"
        self._drain_timeout = float(env.get(_DRAIN_ENV, _RAY_DEFAULT_DRAIN))
        env.setdefault(_NICENESS_ENV, "0")
        fate: dict[str, Any] = (
            {"start_new_session": True} if own_session else {"preexec_fn": _fate_sharing_preexec()}
        )
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **fate
        )
        self.pid = self._proc.pid
        self._ready = threading.Event()
        self._stopping = False
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._reader = threading.Thread(
            target=self._read_output, name=f"lattice-ray-{self.pid}", daemon=True
        )
        self._reader.start()

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the node is up; raise LatticeWorldError (with Ray's output) if not."""
        if self._ready.wait(timeout) and self._proc.poll() is None:
            atexit.register(self.stop)  # an owner that exits without stop() leaves no node
            return
        self.stop()
        output = "".join(self._tail).strip() or "(no output)"
        raise LatticeWorldError(
            f"could not start the Ray {self.what} (exit code {self._proc.returncode}):\n{output}"
        )

    def _read_output(self) -> None:
        assert self._proc.stdout is not None
        level = logging.DEBUG
        for line in self._proc.stdout:
            self._tail.append(line)
            found = _RAY_LOG_LEVEL.search(line)
            if found:  # lines without a level continue the previous record
                level = _LOG_LEVELS.get(found.group(1), logging.DEBUG)
            logger.log(level, "ray %s: %s", self.what, line.rstrip())
            if self._READY_MARK in line:
                self._ready.set()
        code = self._proc.wait()
        self._ready.set()  # EOF: wake wait_ready, which sees the exit
        if self._stopping:
            return
        if self._on_exit is not None:
            self._on_exit(code)  # the owner knows whether it expected this
        else:
            logger.error("the Ray %s exited unexpectedly (code %s)", self.what, code)

    def stop(self) -> None:
        """SIGTERM ``ray start`` (Ray then drains the node for up to ``drain_timeout``
        seconds: running tasks may finish, no new ones start) and wait; kill what is left."""
        atexit.unregister(self.stop)
        self._stopping = True
        if self._proc.poll() is None:
            spawned = self._descendants()
            self._proc.terminate()
            try:
                self._proc.wait(self._drain_timeout + _STOP_MARGIN)
            except subprocess.TimeoutExpired:
                logger.warning("the Ray %s ignored SIGTERM; killing it", self.what)
                self._proc.kill()
                self._proc.wait()
            self._reap(spawned)
        self._reader.join(timeout=5)

    def kill(self) -> None:
        """SIGKILL ``ray start`` and everything it started, now (no drain).

        Does not wait, so it is safe in a signal handler that interrupted :meth:`stop` (which
        holds the process's wait lock; stop then returns as the processes end).
        """
        atexit.unregister(self.stop)
        self._stopping = True
        for process in self._descendants():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _reap(self, spawned: list[psutil.Process], grace: float = 5) -> None:
        # `ray start` gives each process a second or two and then abandons it; nothing of this
        # node may outlive stop(), so that its ports are free when it returns.
        _, survivors = psutil.wait_procs(spawned, timeout=grace)
        for process in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(survivors, timeout=5)


def _health_check_env() -> dict[str, str]:
    env = dict(os.environ)
    for name, value in HEALTH_CHECK_ENV.items():
        env.setdefault(name, value)
    return env


class RayHead(_RayStart):
    """``ray start --head`` on GCS port ``port``, in its own session (see :class:`_RayStart`).

    Its GCS declares silent nodes dead after a few seconds (:data:`HEALTH_CHECK_ENV`).
    """

    def __init__(
        self,
        port: int,
        num_cpus: int | None = None,
        node_ports: NodePorts | None = None,
        record: Path | None = None,
    ) -> None:
        """``record``: where to keep the pid of this head's ``ray start`` (in the data
        directory): a leftover it names, from a head that was killed, is stopped first."""
        self.port = port
        self._record = record
        if record is not None:
            leftover = stop_leftovers(record)
            if leftover is not None:
                logger.warning(
                    "stopped the Ray head (pid %d) that a previous Lattice head on this data "
                    "directory left running",
                    leftover,
                )
        args = ["--head", f"--port={port}", "--include-dashboard=false"]
        if num_cpus is not None:
            args.append(f"--num-cpus={num_cpus}")
        if node_ports is not None:
            args += node_ports.flags(head=True)
        super().__init__(
            f"head on port {port}",
            args,
            _health_check_env(),
            own_session=True,
        )
        if record is not None:
            remember(record, self.pid)

    def stop(self) -> None:
        super().stop()
        if self._record is not None:
            forget(self._record)


@dataclass(frozen=True)
class WorkerNodeSpec:
    """What a worker's Ray node offers to Ray. Lattice does its own accounting; these only
    keep Ray from refusing what Lattice places (Ray counts CPU and memory per task too)."""

    gcs_address: str
    num_cpus: float
    memory_bytes: int
    num_gpus: int = 0
    node_ip: str | None = None
    node_ports: NodePorts | None = None
    #: seconds Ray lets running tasks finish when the worker stops
    drain_timeout: float = 30.0
    #: where the node keeps its sockets and logs (Ray's default: /tmp/ray, shared with every
    #: node of the machine, whose starts then race for socket names)
    temp_dir: str | None = None


class RayWorkerNode(_RayStart):
    """``ray start --address GCS`` in the caller's process group, sharing its fate.

    The node carries a unique custom resource (:attr:`resource`) by which :meth:`find_node`
    picks it out of ``ray.nodes()``. ``on_exit(exit_code)`` is called (on a reader thread) if
    the node stops without :meth:`stop` or :meth:`kill`, e.g. when its head went away.

    Create it on a thread that lives as long as the node (the main thread): the kernel's
    parent-death signal fires when the creating *thread* ends.
    """

    def __init__(self, spec: WorkerNodeSpec, on_exit: Callable[[int], None] | None = None) -> None:
        self.spec = spec
        self.resource = f"{NODE_RESOURCE_PREFIX}{uuid.uuid4().hex}"
        args = [
            f"--address={spec.gcs_address}",
            # Ray wants whole CPUs; Lattice, which may hand out fractions, keeps the count.
            f"--num-cpus={math.ceil(spec.num_cpus)}",
            f"--num-gpus={spec.num_gpus}",
            f"--memory={spec.memory_bytes}",
            f"--resources={json.dumps({self.resource: 1})}",
        ]
        if spec.node_ip:
            args.append(f"--node-ip-address={spec.node_ip}")
        if spec.node_ports is not None:
            args += spec.node_ports.flags(head=False)
        if spec.temp_dir:
            args.append(f"--temp-dir={spec.temp_dir}")
        super().__init__(
            f"worker node of {spec.gcs_address}",
            args,
            dict(os.environ),
            own_session=False,
            drain_timeout=spec.drain_timeout,
            on_exit=on_exit,
        )

    def find_node(self) -> tuple[str, str]:
        """Return this node's Ray NodeID and address, as the cluster knows them.

        A short-lived driver reads ``ray.nodes()`` and disconnects again.

        Raises:
            LatticeUsageError: this process is already connected to Ray.
            LatticeWorldError: the cluster cannot be reached or does not list the node.
        """
        import ray

        if ray.is_initialized():
            raise LatticeUsageError("this process is already connected to Ray")
        # A driver on the main thread installs Ray's own SIGTERM handler (exit at once) and
        # leaves it after shutdown; the worker's handler (deregister, drain) must stay.
        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS} if main else {}
        try:
            ray.init(
                address=self.spec.gcs_address,
                namespace="lattice-worker",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            try:
                nodes = ray.nodes()
            finally:
                ray.shutdown()
        except ConnectionError as exc:
            raise LatticeWorldError(
                f"cannot reach the Ray cluster at {self.spec.gcs_address}: {exc}"
            ) from exc
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        for node in nodes:
            if node.get("Alive") and self.resource in node.get("Resources", {}):
                return str(node["NodeID"]), str(node["NodeManagerAddress"])
        raise LatticeWorldError(
            f"the Ray cluster at {self.spec.gcs_address} does not list this worker's node"
        )
