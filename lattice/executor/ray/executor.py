"""RayExecutor: every submission runs on Ray, pinned to the node the ResourceManager chose.

Ray starts, places and watches the processes here, and holds large values; it is not the
scheduler:

* placement is Lattice's: a submission for a Ray node runs there (hard node affinity), one for
  the single-machine node id ``"local"`` runs wherever Ray likes;
* tasks without GPU or sandbox run on task hosts, long-lived Ray actors of their node
  (:mod:`lattice.executor.ray.hosts`): tasks of a fractional share (``cpu < 1``) on threads
  of shared hosts that hold one CPU's worth each, one-CPU tasks alone in a process host; they reach their host over
  its connection to the head (:mod:`lattice.executor.ray.channel`), or as Ray calls when they
  need the object store. Other tasks (more than one CPU, a GPU, a sandbox) are Ray tasks in a
  worker process of their own;
* GPUs are counted by Lattice: Ray sees ``num_gpus=0`` and the runner exports
  ``CUDA_VISIBLE_DEVICES`` from the GPUs the ResourceManager granted;
* retries are the scheduler's: Ray never re-runs a task (``max_retries=0``); a task whose
  worker, host or node died comes back as an outcome with ``lost=True``;
* large output values stay in Ray's object store between tasks
  (:mod:`lattice.executor.ray.payload`).

Completions arrive on the thread that reads a host's connection, or through
``ObjectRef.future()`` callbacks (see :mod:`lattice.executor.ray.handles`). Nothing is polled
(node membership is pushed, see :meth:`RayExecutor.on_nodes_changed`).
"""

from __future__ import annotations

import functools
import logging
import os
import string
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lattice.core.resource.manager import DEFAULT_JOIN_GRACE
from lattice.exceptions import (
    LatticeInputError,
    LatticeUsageError,
    LatticeWorldError,
)
from lattice.executor.base import (
    ExecutorBackend,
    PendingOutput,
    TaskHandle,
    TaskOutcome,
    TaskSubmission,
    pending_outputs,
)
from lattice.executor.ray.channel import RUN, ChannelServer, dumps
from lattice.executor.ray.handles import ChannelHandle, FollowerHandle, Handle, RayHandle
from lattice.executor.ray.hosts import Host, HostKind, HostPool, host_kind
from lattice.executor.ray.leftovers import RECORD_NAME
from lattice.executor.ray.membership import NodeWatcher, alive_ids
from lattice.executor.ray.node import START_TIMEOUT, RayHead, align_auth_mode
from lattice.executor.ray.payload import CODE_INLINE_BYTES, Packed, pack, unpack
from lattice.executor.ray.ports import NodePorts
from lattice.executor.runner import execute
from lattice.executor.sandbox.runner import SandboxRunner

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise LatticeUsageError(
        'the Ray executor needs Ray, which is not installed: pip install "ray[default]"'
    ) from exc

logger = logging.getLogger(__name__)

#: Ray starts its workers at nice 15 so that its own daemons stay responsive. Here the workers
#: run the tasks: at nice 15 every other process on the node (the client waiting for them,
#: anything else running) takes the CPU first, and a parallel fan-out on a busy machine ran no
#: faster than the same nodes in one process. Lattice runs them at 0, like the code they
#: replace; an explicit RAY_worker_niceness still wins.
_NICENESS_ENV = "RAY_worker_niceness"


#: seconds after a joining node's grace at which the scheduler is told to look again
_GRACE_MARGIN = 1.0

#: how many ``.options(...)`` variants of the remote function, and how many functions' code
#: refs, are kept for reuse
_CACHE_SIZE = 512


# --- what runs inside the Ray worker --------------------------------------------------------


def _run_in_worker(*args: Any) -> TaskOutcome:
    """Run ``(payload, upstream, code, sandbox, *ref_values)`` (see ray.payload.pack).

    One variadic parameter on purpose: Ray binds the arguments of every call to the
    function's signature before it submits the task, and that costs least for ``*args``.
    """
    payload, upstream, code, sandbox, *ref_values = args
    sub = unpack(payload, upstream, code, tuple(ref_values))
    if sandbox is not None:
        return sandbox.run(sub)
    return execute(sub, set_gpu_env=True)


def _run_in_fresh_worker(*args: Any) -> TaskOutcome:
    # Its own function (not an alias) so that Ray registers it with max_calls=1: CUDA reads
    # CUDA_VISIBLE_DEVICES once per process, so a GPU task must not inherit a worker whose CUDA
    # was set up for other GPUs. Ray does the same for its own num_gpus > 0 tasks.
    return _run_in_worker(*args)


# --- the executor ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _is_ray_node_id(node_id: str) -> bool:
    # Asked for every submission, of the same few node ids.
    return len(node_id) == 2 * ray.NodeID.size() and all(c in string.hexdigits for c in node_id)


def _ray_nodes() -> list[dict[str, Any]]:
    try:
        return list(ray.nodes())
    except ray.exceptions.RayError as exc:
        raise LatticeWorldError(f"cannot list the nodes of the Ray cluster: {exc}") from exc


def _affinity(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


class RayExecutor(ExecutorBackend):
    """Runs submissions as Ray tasks on a local Ray, a head it starts, or a cluster it joins.

    Args:
        address: join the Ray cluster at ``host:port`` instead of starting one.
        num_cpus: CPUs of the Ray node this executor starts (whole number; default: all).
        ray_port: start a Ray head for other nodes on this GCS port (``ray start --address
            HOST:PORT`` joins it); without it a private in-process Ray is started.
        sandbox: isolates the submissions it applies to, inside the Ray worker.
        namespace: Ray namespace of the driver.
        node_ports: with ``ray_port``, the port range the head's Ray node listens on (node
            manager, object manager, workers; see :class:`~lattice.executor.ray.ports.NodePorts`),
            so that a firewall can open exactly it. Default: ports Ray picks.
        cancel_grace: seconds a cancelled task has to stop by itself before its worker is
            killed, or (a light task on a task host) before it is reported cancelled (see
            :meth:`cancel`).
        host_connections: send light tasks to their task hosts over a direct connection
            (see :mod:`~lattice.executor.ray.channel`); False sends each as a Ray call.
        join_grace: seconds after a node joins at which the nodes-changed callbacks run once
            more, so that the scheduler looks again at tasks that waited for that node to
            register (the ResourceManager's grace for joining nodes; give both the same).

    Raises:
        LatticeUsageError: both ``address`` and ``ray_port`` were given.
        LatticeInputError: ``num_cpus`` is negative or fractional.
    """

    name = "ray"
    pipelines = True

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float | None = None,
        ray_port: int | None = None,
        sandbox: SandboxRunner | None = None,
        namespace: str = "lattice",
        node_ports: NodePorts | None = None,
        cancel_grace: float = 2.0,
        host_connections: bool = True,
        join_grace: float = DEFAULT_JOIN_GRACE,
        state_dir: Path | None = None,
    ) -> None:
        if address is not None and ray_port is not None:
            raise LatticeUsageError(
                "give either address (join a Ray cluster) or ray_port (start a head), not both"
            )
        if num_cpus is not None and (num_cpus < 0 or not float(num_cpus).is_integer()):
            raise LatticeInputError(
                f"num_cpus of a Ray node must be a whole number, got {num_cpus}"
            )
        self._address = address
        #: where the Ray head this executor starts is recorded (see ray.leftovers)
        self._state_dir = state_dir
        self._num_cpus = None if num_cpus is None else int(num_cpus)
        self._ray_port = ray_port
        self._node_ports = node_ports
        self._sandbox = sandbox
        self._namespace = namespace
        self._cancel_grace = cancel_grace
        self._host_connections = host_connections
        self._join_grace = join_grace
        #: timers that announce the end of a joining node's grace (see _nodes_changed)
        self._grace_timers: list[threading.Timer] = []
        self._channel: ChannelServer | None = None
        self._lock = threading.Lock()
        self._initialized = False
        self._owns_connection = False
        self._head: RayHead | None = None
        self._remote: Any = None
        self._remote_fresh: Any = None
        self._hosts: HostPool | None = None
        #: nodes last seen alive: task hosts are only placed on these
        self._alive: frozenset[str] = frozenset()
        #: submit() state, reused across submissions (see _task_options, _code_arg)
        self._submit_lock = threading.Lock()
        self._options: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._code_refs: OrderedDict[str, ray.ObjectRef[Any]] = OrderedDict()
        self._callbacks: list[Callable[[], None]] = []
        self._watcher: NodeWatcher | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def initialize(self) -> None:
        """Start or join Ray (once; later calls do nothing).

        If this process is already connected to Ray (and neither ``address`` nor ``ray_port``
        was given) that connection is used and left open by :meth:`shutdown`.

        Raises:
            LatticeWorldError: the head could not start or the cluster could not be joined.
            LatticeUsageError: asked to start or join while this process already uses Ray.
        """
        with self._lock:
            if self._initialized:
                return
            if ray.is_initialized():
                if self._address is not None or self._ray_port is not None:
                    raise LatticeUsageError(
                        "this process is already connected to Ray; a RayExecutor with address "
                        "or ray_port must be the one that connects it"
                    )
                logger.info("using this process's existing Ray connection; it stays open")
            else:
                self._connect()
            self._remote = ray.remote(max_retries=0)(_run_in_worker)
            self._remote_fresh = ray.remote(max_retries=0, max_calls=1)(_run_in_fresh_worker)
            if self._host_connections:
                port = self._node_ports.host_connections if self._node_ports else 0
                self._channel = ChannelServer(ray.util.get_node_ip_address(), port)
            self._hosts = HostPool(self._channel)
            self._alive = alive_ids(ray.nodes())
            if len(self._alive) > 1:
                self._arm_grace_timer()
            self._watcher = NodeWatcher(
                ray.get_runtime_context().gcs_address, self._alive, self._nodes_changed
            )
            self._watcher.start()
            self._initialized = True

    def _connect(self) -> None:
        # Ray's own INFO lines ("Started a local Ray instance", ...) stay out of the server's
        # log; print() output of tasks is still forwarded, with Ray's default de-duplication of
        # identical lines from many workers (RAY_DEDUP_LOGS, left as the user set it).
        common: dict[str, Any] = {
            "namespace": self._namespace,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        }
        if self._address is not None:
            try:
                ray.init(address=self._address, **common)
            except ConnectionError as exc:
                raise LatticeWorldError(
                    f"cannot join the Ray cluster at {self._address}: {exc}. If the cluster "
                    "uses token authentication, set RAY_AUTH_MODE=token and give its token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token"
                ) from exc
        elif self._ray_port is not None:
            align_auth_mode()
            record = None if self._state_dir is None else self._state_dir / RECORD_NAME
            head = RayHead(self._ray_port, self._num_cpus, self._node_ports, record)
            head.wait_ready(START_TIMEOUT)
            try:
                ray.init(address=f"127.0.0.1:{self._ray_port}", **common)
            except BaseException:
                head.stop()
                raise
            self._head = head
        else:
            # "local": a fresh private Ray even if RAY_ADDRESS or an earlier `ray start` on
            # this machine would make ray.init() join that cluster instead.
            ray.init(
                address="local",
                num_cpus=self._num_cpus,
                include_dashboard=False,
                _system_config={"worker_niceness": int(os.environ.get(_NICENESS_ENV, "0"))},
                **common,
            )
        self._owns_connection = True

    def shutdown(self) -> None:
        """Stop watching the nodes; disconnect from Ray and stop the head if this executor made them.

        A cluster this executor only joined keeps running. Handles still pending never
        complete afterwards, so the scheduler is stopped first.
        """
        with self._lock:
            if not self._initialized:
                return
            self._initialized = False
            watcher, self._watcher = self._watcher, None
            owns, self._owns_connection = self._owns_connection, False
            head, self._head = self._head, None
            hosts, self._hosts = self._hosts, None
            channel, self._channel = self._channel, None
            timers, self._grace_timers = self._grace_timers, []
        for timer in timers:
            timer.cancel()
        if watcher is not None:
            watcher.stop()
        if hosts is not None:
            hosts.close()
        if channel is not None:
            channel.close()
        with self._submit_lock:
            self._options.clear()
            self._code_refs.clear()
        if owns:
            ray.shutdown()
        if head is not None:
            head.stop()
        if self._sandbox is not None:
            self._sandbox.close()

    def _require_initialized(self) -> None:
        if not self._initialized:
            raise LatticeUsageError("RayExecutor is not initialized: call initialize() first")

    # --- membership --------------------------------------------------------------------------

    def cluster_nodes(self) -> list[dict[str, Any]]:
        """Every node Ray knows, alive or dead, as ``ray.nodes()`` lists them.

        Raises:
            LatticeWorldError: the cluster's GCS cannot be reached.
        """
        self._require_initialized()
        return _ray_nodes()

    def own_node_id(self) -> str:
        """The Ray node this executor's driver (the head) runs on."""
        self._require_initialized()
        return str(ray.get_runtime_context().get_node_id())

    def alive_node_ids(self) -> set[str]:
        """Ids of the nodes Ray counts alive. Raises LatticeWorldError like cluster_nodes."""
        self._require_initialized()
        self._alive = alive_ids(_ray_nodes())
        return set(self._alive)

    def on_nodes_changed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the set of alive nodes changes, as the cluster's GCS
        publishes it (see ray.membership: pushed, not polled), from the watcher's thread."""
        with self._lock:
            self._callbacks.append(callback)

    def _nodes_changed(self, alive: frozenset[str]) -> None:
        if alive - self._alive:
            self._arm_grace_timer()
        self._alive = alive
        self._announce()

    def _arm_grace_timer(self) -> None:
        """A node joined: when its grace ends (it may not have registered), tell the
        callbacks again, so that tasks waiting only for it are looked at again then."""
        # The ResourceManager starts the grace when the scheduler hears of the node, a little
        # after this: the margin makes the callback come after the grace has ended there.
        timer = threading.Timer(self._join_grace + _GRACE_MARGIN, self._grace_ended)
        timer.daemon = True
        with self._lock:
            self._grace_timers = [t for t in self._grace_timers if t.is_alive()] + [timer]
        timer.start()

    def _grace_ended(self) -> None:
        if self._initialized:
            self._announce()

    def _announce(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one observer's bug must not stop the others
                logger.exception("nodes-changed callback %r failed", callback)

    # --- tasks -------------------------------------------------------------------------------

    def submit(self, submission: TaskSubmission) -> TaskHandle:
        """Start ``submission`` on its node; the handle reports its outcome.

        A task without GPU or sandbox runs on a task host of its node (see
        :mod:`~lattice.executor.ray.hosts`: a thread of a shared host for ``cpu < 1``, a
        process host of its own otherwise), created on first use, and only on a node seen
        alive, so that one pinned to a node that is gone comes back lost as a Ray task does.
        It goes over the host's connection when it can (see
        :mod:`~lattice.executor.ray.channel`), else as a Ray call. A GPU or sandboxed task is
        a Ray task of its own.

        Raises:
            LatticeUsageError: the executor is not initialized.
        """
        self._require_initialized()
        node = submission.node
        where = (
            f"node {node.node_id} ({node.node_ip})"
            if _is_ray_node_id(node.node_id)
            else f"node {node.node_id!r} ({node.node_ip})"
        )
        sandbox = self._sandbox
        if sandbox is not None and not sandbox.applies(submission):
            sandbox = None
        kind = host_kind(submission, sandbox is not None)
        waits_for = _outputs_to_wait_for(submission, kind)
        if waits_for:
            return FollowerHandle(
                submission, where, waits_for, lambda sub: self._send(sub, where, kind, sandbox)
            )
        return self._send(submission, where, kind, sandbox)

    def _send(
        self,
        submission: TaskSubmission,
        where: str,
        kind: HostKind | None,
        sandbox: SandboxRunner | None,
    ) -> Handle:
        hosts = self._hosts
        if hosts is None:
            raise LatticeUsageError("RayExecutor was shut down")
        node = submission.node
        pinned = _is_ray_node_id(node.node_id)
        code = self._code_arg(submission)
        packed = pack(submission, drop_code=code is not None)
        if kind is not None and (not pinned or node.node_id in self._alive):
            strategy = _affinity(node.node_id) if pinned else None
            cpu = submission.requirements.cpu
            if kind is HostKind.SHARED:
                host = hosts.share(node.node_id, strategy, cpu)
            else:
                host = hosts.acquire(node.node_id, strategy)
            on_lost = functools.partial(hosts.forget, host)
            handle = _send_to_host(host, submission, where, packed, code, on_lost)
            if kind is HostKind.PROCESS:
                handle.on_ended(lambda: hosts.release(host))
            else:
                handle.on_ended(lambda: hosts.unshare(host, cpu))
            return handle
        remote = self._task_options(submission, pinned)
        ref = remote.remote(packed.payload, packed.upstream, code, sandbox, *packed.refs)
        return RayHandle(submission, ref, where)

    def task_hosts(self) -> list[Host]:
        """The task hosts alive now (see :mod:`~lattice.executor.ray.hosts`)."""
        return self._hosts.hosts() if self._hosts is not None else []

    def release_node(self, node_id: str) -> None:
        """Stop the task host on ``node_id`` (see ExecutorBackend.release_node)."""
        if self._hosts is not None:
            self._hosts.release_node(node_id)

    def _task_options(self, sub: TaskSubmission, pinned: bool) -> Any:
        """The remote function with this submission's options. ``.options()`` builds a new
        wrapper (and validates every option) on each call, so the wrappers are kept by what
        they depend on; a node affinity strategy is part of them."""
        fresh = bool(sub.node.gpu_ids)
        req = sub.requirements
        key = (
            fresh,
            req.cpu,
            req.memory_bytes,
            sub.node.node_id if pinned else None,
            sub.task_name,
        )
        with self._submit_lock:
            remote = self._options.get(key)
            if remote is not None:
                self._options.move_to_end(key)
                return remote
        options: dict[str, Any] = {"num_cpus": req.cpu, "num_gpus": 0, "name": sub.task_name}
        if req.memory_bytes:
            options["memory"] = req.memory_bytes
        if pinned:
            options["scheduling_strategy"] = _affinity(sub.node.node_id)
        remote = (self._remote_fresh if fresh else self._remote).options(**options)
        with self._submit_lock:
            self._options[key] = remote
            if len(self._options) > _CACHE_SIZE:
                self._options.popitem(last=False)
        return remote

    def _code_arg(self, sub: TaskSubmission) -> ray.ObjectRef[Any] | None:
        """For a large function, a ref to its code, put in the object store once; else None
        (the code travels inside the payload, which costs less than resolving a ref)."""
        if len(sub.code) <= CODE_INLINE_BYTES:
            return None
        with self._submit_lock:
            ref = self._code_refs.get(sub.code_id)
            if ref is not None:
                self._code_refs.move_to_end(sub.code_id)
                return ref
        ref = ray.put(sub.code)
        with self._submit_lock:
            self._code_refs[sub.code_id] = ref
            if len(self._code_refs) > _CACHE_SIZE:
                # Tasks already submitted hold their own reference to the evicted code.
                self._code_refs.popitem(last=False)
        return ref

    def cancel(self, handle: TaskHandle) -> bool:
        """Stop the task: dequeue it, or interrupt it, or after ``cancel_grace`` end it.

        A task not yet started is dequeued (never sent, if it waits for an upstream output in
        the head). A running task is interrupted: Ray raises KeyboardInterrupt in a Ray task's
        process; a task's thread on a task host gets TaskInterrupted (see
        :mod:`~lattice.executor.ray.hosts`). Either is seen only when the task next runs Python
        bytecode: a task blocked in a sleep, a socket read or C code would not see it until
        that call returns. So if the task is still running ``cancel_grace`` seconds later, its
        worker process or process host is killed (the process runs this one task only); a
        thread of a shared host cannot be killed, so a light task is then reported cancelled
        and its eventual result discarded.

        Returns False if the task had already finished; otherwise True, and the handle's
        callbacks then receive a ``TaskCancelledError`` outcome (or the task's own outcome, if
        it finished first).
        """
        if not isinstance(handle, Handle):
            raise LatticeUsageError(f"not a handle of this executor: {handle!r}")
        if handle.done():
            return False
        if isinstance(handle, FollowerHandle):
            if handle.cancel_unsent():
                return True
            sent = handle.sent
            assert sent is not None
            return self.cancel(sent)
        assert isinstance(handle, ChannelHandle | RayHandle)
        handle.cancel_requested = True
        after_grace: Callable[[], None]
        host = handle.host
        if host is None:
            assert isinstance(handle, RayHandle)
            ray.cancel(handle.ref, force=False)
            after_grace = functools.partial(self._force_cancel, handle)
        else:
            if isinstance(handle, ChannelHandle):
                assert host.link is not None
                host.link.interrupt(handle.task_key)
            else:
                ray.cancel(handle.ref, force=False)  # dequeued if it has not started
                # The interrupt's own result is read (and dropped) so that Ray does not
                # report it as an unhandled error if the host died meanwhile.
                host.actor.interrupt.remote(handle.task_key).future()
            if host.kind is HostKind.SHARED:
                after_grace = handle.abandon
            else:
                after_grace = functools.partial(self._kill_host, handle, host)
        timer = threading.Timer(self._cancel_grace, after_grace)
        timer.daemon = True
        handle.on_ended(timer.cancel)
        timer.start()
        return True

    def _kill_host(self, handle: Handle, host: Host) -> None:
        """The task on process host ``host`` did not stop within the grace: kill the host
        (its death is the task's cancellation, as for a Ray task's worker)."""
        if handle.done() or self._hosts is None:
            return
        self._hosts.discard(host)

    def _force_cancel(self, handle: RayHandle) -> None:
        if handle.done() or not self._initialized:
            return
        try:
            ray.cancel(handle.ref, force=True)
        except ray.exceptions.RayError:  # the task ended or Ray went away meanwhile
            logger.warning("could not kill the worker of task %s", handle.task_key, exc_info=True)


def _outputs_to_wait_for(sub: TaskSubmission, kind: HostKind | None) -> dict[str, PendingOutput]:
    """The pending upstream outputs that ``sub`` waits for in the head before it is sent: those
    coming over a host's connection (Ray cannot wait for them), and all of them for a process
    host (it runs one task at a time: the task must not hold it while it waits)."""
    return {
        name: value
        for name, value in pending_outputs(sub).items()
        if kind is HostKind.PROCESS or isinstance(value.handle, ChannelHandle | FollowerHandle)
    }


def _send_to_host(
    host: Host,
    sub: TaskSubmission,
    where: str,
    packed: Packed,
    code: Any,
    on_lost: Callable[[], None],
) -> Handle:
    """Send ``sub`` to ``host``: over its connection if it is up and the task needs nothing from
    the object store, else as a Ray call."""
    if host.link is not None and not packed.refs and code is None:
        handle = ChannelHandle(sub, where, host, on_lost)
        try:
            frame = dumps((RUN, sub.task_key, packed.payload, packed.upstream))
        except Exception:  # noqa: BLE001 - an input only Ray's serializer carries (or reports)
            frame = None
        if frame is not None and host.link.send_run(sub.task_key, handle, frame):
            return handle
    ref = host.actor.run.remote(packed.payload, packed.upstream, code, *packed.refs)
    return RayHandle(sub, ref, where, host, on_lost)
