"""Task hosts: long-lived Ray actors that run Lattice's tasks, per node.

Two kinds, chosen by :func:`host_kind`:

* **shared** — a submission that asks for less than one CPU (``requirements.cpu < 1``), no GPU
  and no sandbox runs on a thread of one of its node's shared hosts, which hold at most one
  CPU's worth of tasks at once: a task of ``cpu`` c goes to the fullest shared host of its node
  whose tasks running now ask for at most ``1 - c`` CPUs together, or to a new one if none has
  room (:class:`HostPool`). So light tasks (typically I/O-bound: an LLM call, a web request, a
  tool; ``cpu 0.05`` each) overlap by the dozen on threads of a process that is already running
  (Ray runs each concurrent task in a worker process of its own and starts one, about a second
  on a small machine, for every task beyond its idle workers: 32 concurrent calls that each
  wait 0.5 s took ~3 s that way), while CPU-bound tasks that ask for a real share (``cpu 0.5``)
  are spread over as many processes as their shares add up to: four of them on two cores run
  two by two in two processes, as fast as four ``cpu 1`` tasks, not behind one GIL. The user
  says nothing more than the share: a task's ``cpu`` is the CPU it may use.
* **process** — a submission for exactly one CPU (the default request: CPU-bound work), no
  GPU and no sandbox runs alone in a process host: a host that runs one task at a time. A node
  keeps as many as it has needed at once (never more than its CPUs: the ResourceManager admits
  the tasks), each reused from task to task as Ray reuses its worker processes. CPU-bound
  tasks stay parallel across processes, and a task costs a message on the host's connection
  to the head instead of a Ray task (a lease from the raylet, a worker, a completion
  callback). As in a Ray task of one CPU, ``OMP_NUM_THREADS`` is 1; unlike one, Ray's
  ``get_assigned_resources()`` is empty there (Lattice, not Ray, counts the CPU).

A task for more than one CPU (it means to use several threads: Ray gives it that many CPUs
and sets ``OMP_NUM_THREADS`` to match), a GPU task and a sandboxed task remain Ray tasks of
their own (a GPU task in a fresh process, see ray_executor).

A host is created on first use, pinned to its node by node affinity, and lives as long as the
executor (a process host killed to cancel its task is replaced on next use). Ray sees it as
``num_cpus=0``: Lattice's ResourceManager has already counted the CPU and memory of every task
it places there, and limits how many run at once. Tasks reach a host over its connection to
the head (:mod:`lattice.executor.ray.channel`) or, when they need Ray's object store, as Ray
calls.

Same semantics as a plain task:

* results and errors: the same runner runs the task; the outcome is the task's return value;
* lost: if the host process dies (killed, crashed, its node gone) every task on it comes back
  ``lost`` and the scheduler dispatches it again, to a new host;
* cancel: the task's thread gets :class:`TaskInterrupted` raised at its next Python bytecode
  (as Ray raises KeyboardInterrupt in a task's process), so its ``finally`` blocks run. A
  thread blocked in C (a sleep, a socket read) sees it only when that call returns. If the
  task still runs after the executor's grace period, a process host is killed (as Ray kills a
  task's worker); a thread of a shared host cannot be killed, so the task is reported
  cancelled and whatever it returns later is discarded, as on the local executor.
"""

from __future__ import annotations

import ctypes
import logging
import pickle
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

import ray

from lattice.executor.base import TaskKind, TaskOutcome, TaskSubmission
from lattice.executor.large_values import has_large_values
from lattice.executor.local_executor import CANCELLED
from lattice.executor.ray.channel import (
    DONE,
    INTERRUPT,
    KEPT,
    RUN,
    ChannelServer,
    HostLink,
    connect,
    dumps,
)
from lattice.executor.ray.payload import unpack
from lattice.executor.runner import error_info, execute

logger = logging.getLogger(__name__)

#: threads of a shared host: how many light tasks can run at once on it (more wait in its
#: queue; one CPU's worth of shares, as the pool packs them, is usually far fewer)
HOST_CONCURRENCY = 256
#: Ray's threads of a process host: its connection, and the Ray calls that fetch a kept outcome
#: or run a task that needs the object store (one task runs at a time all the same)
PROCESS_HOST_CALLS = 4
#: the GIL switch interval in a host (Python's default is 5 ms): the thread that reads the
#: connection must not wait that long behind a running task to take the next one
HOST_SWITCH_INTERVAL = 0.0005
#: slack when adding up CPU shares (0.1 * 10 is not quite 1.0)
_EPS = 1e-9


class HostKind(Enum):
    SHARED = "shared"
    PROCESS = "process"


def host_kind(sub: TaskSubmission, sandboxed: bool) -> HostKind | None:
    """Which kind of host runs ``sub`` (see the module docstring); None: a Ray task."""
    if sandboxed or sub.node.gpu_ids:
        return None
    cpu = sub.requirements.cpu
    return HostKind.SHARED if cpu < 1 else HostKind.PROCESS if cpu == 1 else None


class TaskInterrupted(BaseException):
    """Raised in a host thread to stop the task it runs. A BaseException, so that the task's
    own ``except Exception`` does not swallow it (like KeyboardInterrupt)."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exc_type`` at its next bytecode; None withdraws it."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


class TaskHost:
    """The actor: runs submissions on its threads, sent as Ray calls (:meth:`run`) or over its
    connection to the head (:meth:`serve`; see :mod:`lattice.executor.ray.channel`)."""

    def __init__(self) -> None:
        sys.setswitchinterval(HOST_SWITCH_INTERVAL)
        self._lock = threading.Lock()
        #: task key -> id of the thread running it
        self._threads: dict[str, int] = {}
        self._interrupted: set[str] = set()
        #: outcomes of tasks sent over the connection that the head fetches with take()
        self._kept: dict[str, TaskOutcome] = {}
        #: held while a task's function and inputs are unpickled (see runner.execute)
        self._decoding = threading.Lock()

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, *args: Any) -> TaskOutcome:
        """Run ``(payload, upstream, code, *ref_values)`` (see ray.payload.pack) here.

        One variadic parameter on purpose: Ray binds the arguments of every call to the
        method's signature before it submits it, and that costs least for ``*args``.
        """
        payload, upstream, code, *ref_values = args
        return self._execute(unpack(payload, upstream, code, tuple(ref_values)))

    def serve(self, address: tuple[str, int], key: bytes, link_id: str, threads: int) -> None:
        """Connect to the head and run the tasks it sends, on up to ``threads`` threads,
        until the connection ends.

        Runs for the host's whole life on one of its actor threads; the head holds the call's
        ref as the host's lifeline. Raises if the head cannot be reached (the head then keeps
        sending this host's tasks as Ray calls).
        """
        conn = connect(address, key, link_id)
        send_lock = threading.Lock()
        pool = ThreadPoolExecutor(threads, thread_name_prefix="lattice-host")
        try:
            while True:
                try:
                    frame = conn.recv_bytes()
                except (EOFError, OSError):
                    return
                kind, task_key, *rest = pickle.loads(frame)
                if kind == RUN:
                    pool.submit(self._serve_one, conn, send_lock, task_key, *rest)
                elif kind == INTERRUPT:
                    self.interrupt(task_key)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            conn.close()

    def take(self, key: str) -> TaskOutcome:
        """The outcome of task ``key`` that :meth:`serve` kept (its reply said KEPT)."""
        with self._lock:
            return self._kept.pop(key)

    def _serve_one(
        self, conn: Connection, send_lock: threading.Lock, key: str, payload: bytes, upstream: Any
    ) -> None:
        try:
            sub = unpack(payload, upstream, None, ())
        except Exception as exc:  # noqa: BLE001 - e.g. a module this process lacks
            # The task's failure, as when a Ray worker cannot unpickle its arguments.
            reply: tuple[Any, ...] = (DONE, key, dumps(TaskOutcome(error=error_info(exc))))
        else:
            reply = self._outcome_reply(key, sub.kind, self._execute(sub))
        with send_lock:
            try:
                conn.send_bytes(dumps(reply))
            except OSError:
                return  # the head is gone or dropped the connection: it counts the task lost

    def _outcome_reply(self, key: str, kind: TaskKind, outcome: TaskOutcome) -> tuple[Any, ...]:
        """DONE with the outcome, or KEPT: large values stay in the object store, and what
        this process cannot pickle is left to Ray's serializer (and its error)."""
        if has_large_values(outcome, kind):
            return self._keep(key, outcome)
        try:
            return (DONE, key, dumps(outcome))
        except Exception:  # noqa: BLE001 - Ray's serializer then reports what is wrong
            return self._keep(key, outcome)

    def _keep(self, key: str, outcome: TaskOutcome) -> tuple[str, str]:
        with self._lock:
            self._kept[key] = outcome
        return (KEPT, key)

    def _execute(self, sub: TaskSubmission) -> TaskOutcome:
        key = sub.task_key
        try:
            with self._lock:
                self._threads[key] = threading.get_ident()
            try:
                # never a GPU task: see host_kind
                outcome = execute(sub, set_gpu_env=False, decoding=self._decoding)
            finally:
                self._leave(key)
            return outcome
        except TaskInterrupted:
            # The interrupt may have landed inside the first _leave: leaving twice is harmless.
            self._leave(key)
            return TaskOutcome(error=CANCELLED)

    def interrupt(self, key: str) -> bool:
        """Raise TaskInterrupted in the thread running task ``key``; False if none is."""
        with self._lock:
            thread = self._threads.get(key)
            if thread is None:
                return False
            self._interrupted.add(key)
            _raise_in_thread(thread, TaskInterrupted)
            return True

    def _leave(self, key: str) -> None:
        with self._lock:
            self._threads.pop(key, None)
            if key in self._interrupted:
                self._interrupted.discard(key)
                # The task ended before it ran another bytecode: the interrupt is still
                # pending and must not hit the next task this thread runs.
                _raise_in_thread(threading.get_ident(), None)


@dataclass(eq=False)
class Host:
    """One task host: its actor, and its connection to the head once it is up."""

    actor: Any
    node_id: str
    kind: HostKind
    #: None when the executor runs without connections (every task is then a Ray call)
    link: HostLink | None = None
    #: a shared host: the CPU its running tasks ask for together (at most 1)
    load: float = 0.0


class HostPool:
    """The task hosts of one executor: per node one shared host and the process hosts it has
    needed, each created on first use.

    With a ``channel``, each new host is asked to connect back to it (see
    :mod:`lattice.executor.ray.channel`); until it has, its tasks go as Ray calls.
    """

    def __init__(self, channel: ChannelServer | None = None) -> None:
        self._actor_class = ray.remote(TaskHost)
        self._channel = channel
        # Reentrant: a lifeline that ended already runs its callback inside _start.
        self._lock = threading.RLock()
        #: node id -> its shared hosts (see the module docstring)
        self._shared: dict[str, list[Host]] = {}
        #: every process host alive
        self._processes: set[Host] = set()
        #: node id -> its process hosts that run nothing now
        self._idle: dict[str, list[Host]] = {}

    def share(self, node_id: str, strategy: Any, cpu: float) -> Host:
        """A shared host of ``node_id`` (placed with ``strategy``, None: anywhere) with room
        for a task of ``cpu`` (< 1): the fullest whose tasks hold at most ``1 - cpu`` CPUs,
        or a new one. The share counts on it until :meth:`unshare`."""
        with self._lock:
            room = [h for h in self._shared.get(node_id, ()) if h.load + cpu <= 1 + _EPS]
            if room:
                host = max(room, key=lambda h: h.load)
            else:
                host = self._start(node_id, strategy, HostKind.SHARED)
                self._shared.setdefault(node_id, []).append(host)
            host.load += cpu
            return host

    def unshare(self, host: Host, cpu: float) -> None:
        """A task of ``cpu`` on shared ``host`` (from :meth:`share`) has ended."""
        with self._lock:
            left = host.load - cpu
            # Shares such as 0.1 do not add up exactly: what is left of them is nothing.
            host.load = left if left > _EPS else 0.0

    def acquire(self, node_id: str, strategy: Any) -> Host:
        """A process host of ``node_id`` that runs nothing, created if none is idle; it is
        the caller's until :meth:`release`."""
        with self._lock:
            idle = self._idle.get(node_id)
            if idle:
                return idle.pop()
            host = self._start(node_id, strategy, HostKind.PROCESS)
            self._processes.add(host)
            return host

    def release(self, host: Host) -> None:
        """``host`` (from :meth:`acquire`) has finished its task: the next may use it."""
        with self._lock:
            if host in self._processes:
                self._idle.setdefault(host.node_id, []).append(host)

    def _start(self, node_id: str, strategy: Any, kind: HostKind) -> Host:
        shared = kind is HostKind.SHARED
        options: dict[str, Any] = {
            "num_cpus": 0,
            "max_concurrency": HOST_CONCURRENCY if shared else PROCESS_HOST_CALLS,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        actor: Any = self._actor_class.options(**options).remote()
        host = Host(actor, node_id, kind)
        if self._channel is None:
            return host
        host.link = link = self._channel.new_link()
        threads = HOST_CONCURRENCY if shared else 1
        lifeline = actor.serve.remote(
            self._channel.address, self._channel.key, link.link_id, threads
        )
        lifeline.future().add_done_callback(lambda f: self._lifeline_ended(host, f))
        return host

    def _lifeline_ended(self, host: Host, lifeline: Future[Any]) -> None:
        """The host's serve() call ended: its connection's tasks are lost; if it died, the
        next task for its node gets a new host."""
        exc = lifeline.exception()
        assert host.link is not None
        if isinstance(exc, ray.exceptions.RayActorError):
            self.forget(host)
            host.link.close(f"its task host process died ({type(exc).__name__})")
            return
        if exc is not None:
            # It could not connect: its tasks keep going as Ray calls.
            logger.warning("a task host could not keep its connection to the head: %s", exc)
        host.link.close("its task host stopped serving its connection to the head")

    def forget(self, host: Host) -> None:
        """Drop ``host`` (it died): the next task for its node starts a new one."""
        with self._lock:
            shared = self._shared.get(host.node_id)
            if shared and host in shared:
                shared.remove(host)
            self._processes.discard(host)
            idle = self._idle.get(host.node_id)
            if idle and host in idle:
                idle.remove(host)

    def discard(self, host: Host) -> None:
        """Kill ``host`` (its task must stop) and drop it."""
        self.forget(host)
        _kill(host.actor)

    def release_node(self, node_id: str) -> None:
        """Stop the hosts of ``node_id`` (its node is leaving and runs none of its tasks): a
        live actor would hold the node up while Ray drains it."""
        with self._lock:
            hosts = [h for h in self._all() if h.node_id == node_id]
        for host in hosts:
            self.discard(host)

    def hosts(self) -> list[Host]:
        with self._lock:
            return self._all()

    def _all(self) -> list[Host]:
        return [*(h for hosts in self._shared.values() for h in hosts), *self._processes]

    def close(self) -> None:
        """Stop every host (their running tasks are lost with them)."""
        with self._lock:
            hosts = self._all()
            self._shared, self._processes, self._idle = {}, set(), {}
        for host in hosts:
            _kill(host.actor)


def _kill(host: Any) -> None:
    try:
        ray.kill(host, no_restart=True)
    except (ray.exceptions.RayError, ValueError):
        # Already dead, or Ray is gone: either way it no longer runs.
        return
