"""RayExecutor: every submission runs on Ray, pinned to the node the ResourceManager chose.

Ray is the transport and the process pool here, not the scheduler:

* placement is Lattice's: a submission for a Ray node runs there (hard node affinity), one for
  the single-machine node id ``"local"`` runs wherever Ray likes;
* light tasks (``cpu < 1``, no GPU, no sandbox: typically I/O-bound) run on threads of a
  long-lived task host per node (:mod:`lattice.executor.ray_hosts`); every other task is one
  Ray task in a worker process of its own;
* GPUs are counted by Lattice: Ray sees ``num_gpus=0`` and the runner exports
  ``CUDA_VISIBLE_DEVICES`` from the GPUs the ResourceManager granted;
* retries are the scheduler's: Ray never re-runs a task (``max_retries=0``); a task whose
  worker, host or node died comes back as an outcome with ``lost=True``;
* large output values stay in Ray's object store between tasks
  (:mod:`lattice.executor.ray_payload`).

Completions arrive through ``ObjectRef.future()`` callbacks. Node membership is the one thing
that is polled (see :meth:`RayExecutor.on_nodes_changed`).
"""

from __future__ import annotations

import functools
import logging
import os
import string
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

from lattice.exceptions import (
    LatticeInputError,
    LatticeUsageError,
    LatticeWorldError,
    TaskErrorInfo,
)
from lattice.executor.base import (
    DoneCallback,
    ExecutorBackend,
    TaskHandle,
    TaskOutcome,
    TaskSubmission,
)
from lattice.executor.local_executor import CANCELLED
from lattice.executor.ray_hosts import HostPool, is_light
from lattice.executor.ray_membership import NodeWatcher, alive_ids
from lattice.executor.ray_node import START_TIMEOUT, RayHead, align_auth_mode
from lattice.executor.ray_payload import CODE_INLINE_BYTES, pack, store_large_values, unpack
from lattice.executor.ray_ports import NodePorts
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


#: how many ``.options(...)`` variants of the remote function, and how many functions' code
#: refs, are kept for reuse
_CACHE_SIZE = 512


# --- what runs inside the Ray worker --------------------------------------------------------


def _run_in_worker(*args: Any) -> TaskOutcome:
    """Run ``(payload, upstream, code, sandbox, *ref_values)`` (see ray_payload.pack).

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


# --- results --------------------------------------------------------------------------------


def _outcome_of(
    future: Future[Any], task: str, where: str, cancelled: bool, on_host: bool
) -> TaskOutcome:
    """Translate a finished Ray future into the outcome the scheduler understands.

    ``cancelled``: Lattice asked to cancel the task, so a killed worker means cancelled.
    """
    exc = future.exception(timeout=0)
    if exc is not None:
        return _failure(exc, task, where, cancelled, on_host)
    value = future.result(timeout=0)
    if not isinstance(value, TaskOutcome):
        message = f"task {task} returned {type(value).__name__}, not an outcome"
        return TaskOutcome(error=TaskErrorInfo.framework("ExecutorError", message))
    return value


def _failure(
    exc: BaseException, task: str, where: str, cancelled: bool, on_host: bool
) -> TaskOutcome:
    errors = ray.exceptions
    if isinstance(exc, errors.TaskCancelledError):
        return TaskOutcome(error=CANCELLED)
    if isinstance(exc, errors.RayTaskError):
        # Raised outside the runner's own guard (a BaseException, or the submission could not
        # be unpickled in the worker): the task's failure, so not retried.
        cause = exc.cause
        return TaskOutcome(error=TaskErrorInfo(type(cause).__name__, str(cause), _traceback(exc)))
    if isinstance(exc, errors.RaySystemError) and isinstance(exc.client_exc, BaseException):
        # The result arrived but cannot be unpickled here (e.g. a module the server lacks).
        cause = exc.client_exc
        message = f"the result of task {task} could not be loaded on the server: {cause}"
        return TaskOutcome(error=TaskErrorInfo(type(cause).__name__, message, _traceback(exc)))
    if cancelled:
        # cancel() escalated to killing the worker: that death is the cancellation.
        return TaskOutcome(error=CANCELLED)
    if isinstance(exc, errors.RayError):
        return _lost(exc, task, where, on_host)
    logger.error("unexpected error from Ray for task %s", task, exc_info=exc)
    return TaskOutcome(error=TaskErrorInfo.framework(type(exc).__name__, str(exc)))


def _traceback(exc: BaseException) -> str:
    # The error Ray raises is an instance of the cause's class too, and delegates unknown
    # attributes to the cause: when Ray did not set ``traceback_str`` that lookup fails.
    return getattr(exc, "traceback_str", None) or ""


def _lost(exc: BaseException, task: str, where: str, on_host: bool = False) -> TaskOutcome:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
    if on_host and isinstance(exc, ray.exceptions.RayActorError):
        # The task host is the worker process of its light tasks: its death is theirs.
        reason = f"its task host process died ({type(exc).__name__}: {reason})"
        message = f"task {task} was lost on {where}: WorkerCrashedError: {reason}"
    else:
        message = f"task {task} was lost on {where}: {type(exc).__name__}: {reason}"
    return TaskOutcome(error=TaskErrorInfo.framework("WorkerLostError", message), lost=True)


class _RayHandle(TaskHandle):
    """One submission on Ray. Its outcome is settled once: when Ray reports the task over, or
    when the executor stops waiting for a cancelled task that cannot be stopped (abandon)."""

    def __init__(
        self,
        sub: TaskSubmission,
        ref: ray.ObjectRef[Any],
        where: str,
        host: Any = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(sub.task_key)
        self.ref = ref
        #: the task host running it, for light tasks (see ray_hosts)
        self.host = host
        #: set by RayExecutor.cancel before it asks Ray to stop the task
        self.cancel_requested = False
        self._task = f"{sub.task_name} ({sub.task_key})"
        self._kind = sub.kind
        self._where = where
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._settled = False
        self._outcome: Future[TaskOutcome] = Future()
        # One future per handle: each ref.future() call registers its own fetch with Ray.
        self._ray_future: Future[Any] = ref.future()
        self._ray_future.add_done_callback(self._ray_done)

    def _ray_done(self, future: Future[Any]) -> None:
        try:
            outcome = _outcome_of(
                future, self._task, self._where, self.cancel_requested, self.host is not None
            )
        except Exception as exc:
            # The task is over whatever its report says: an outcome that cannot be read is
            # the task's error, never a task that stays running.
            logger.exception("cannot read how task %s ended", self._task)
            message = f"cannot read how task {self._task} ended: {type(exc).__name__}: {exc}"
            outcome = TaskOutcome(error=TaskErrorInfo.framework("ExecutorError", message))
        if outcome.lost and self._on_lost is not None:
            self._on_lost()
        # Large output values stay where they are: see ray_payload.
        self._settle(store_large_values(outcome, self.ref, self._kind))

    def abandon(self) -> None:
        """Report the task cancelled now; whatever it returns later is discarded."""
        self._settle(TaskOutcome(error=CANCELLED))

    def _settle(self, outcome: TaskOutcome) -> None:
        with self._lock:
            if self._settled:
                return  # abandoned first: this is the discarded late result
            self._settled = True
        self._outcome.set_result(outcome)

    def on_ray_done(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when Ray reports the task over, without waiting for its outcome."""
        self._ray_future.add_done_callback(lambda _f: fn())

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(outcome)`` once the task ends; at once if it already has.

        Otherwise ``fn`` runs on a Ray-owned thread, so it must be quick (post a message).
        """
        self._outcome.add_done_callback(lambda f: fn(f.result()))

    def done(self) -> bool:
        return self._outcome.done()

    def result(self, timeout: float | None = None) -> TaskOutcome:
        done, _ = wait([self._outcome], timeout)
        if not done:
            raise TimeoutError(f"task {self.task_key} not done after {timeout}s")
        return self._outcome.result()


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
            manager, object manager, workers; see :class:`~lattice.executor.ray_ports.NodePorts`),
            so that a firewall can open exactly it. Default: ports Ray picks.
        cancel_grace: seconds a cancelled task has to stop by itself before its worker is
            killed, or (a light task on a task host) before it is reported cancelled (see
            :meth:`cancel`).

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
        self._num_cpus = None if num_cpus is None else int(num_cpus)
        self._ray_port = ray_port
        self._node_ports = node_ports
        self._sandbox = sandbox
        self._namespace = namespace
        self._cancel_grace = cancel_grace
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
            self._hosts = HostPool()
            self._alive = alive_ids(ray.nodes())
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
            head = RayHead(self._ray_port, self._num_cpus, self._node_ports)
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
        if watcher is not None:
            watcher.stop()
        if hosts is not None:
            hosts.close()
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

    def alive_node_ids(self) -> set[str]:
        """Ids of the nodes Ray counts alive. Raises LatticeWorldError like cluster_nodes."""
        self._require_initialized()
        self._alive = alive_ids(_ray_nodes())
        return set(self._alive)

    def on_nodes_changed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the set of alive nodes changes, as the cluster's GCS
        publishes it (see ray_membership: pushed, not polled), from the watcher's thread."""
        with self._lock:
            self._callbacks.append(callback)

    def _nodes_changed(self, alive: frozenset[str]) -> None:
        self._alive = alive
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

        A light task (see :func:`~lattice.executor.ray_hosts.is_light`) runs on a thread of
        its node's task host, created on first use; only on a node seen alive, so that one
        pinned to a node that is gone comes back lost as a plain task does. Every other task
        is a Ray task of its own.

        Raises:
            LatticeUsageError: the executor is not initialized.
        """
        self._require_initialized()
        hosts = self._hosts
        assert hosts is not None
        node = submission.node
        pinned = _is_ray_node_id(node.node_id)
        where = (
            f"node {node.node_id} ({node.node_ip})"
            if pinned
            else f"node {node.node_id!r} ({node.node_ip})"
        )
        sandbox = self._sandbox
        if sandbox is not None and not sandbox.applies(submission):
            sandbox = None
        code = self._code_arg(submission)
        packed = pack(submission, drop_code=code is not None)
        if is_light(submission, sandbox is not None) and (
            not pinned or node.node_id in self._alive
        ):
            host = hosts.get(node.node_id, _affinity(node.node_id) if pinned else None)
            ref = host.run.remote(packed.payload, packed.upstream, code, *packed.refs)
            return _RayHandle(
                submission, ref, where, host, lambda: hosts.forget(node.node_id, host)
            )
        remote = self._task_options(submission, pinned)
        ref = remote.remote(packed.payload, packed.upstream, code, sandbox, *packed.refs)
        return _RayHandle(submission, ref, where)

    def release_node(self, node_id: str) -> None:
        """Stop the task host on ``node_id`` (see ExecutorBackend.release_node)."""
        if self._hosts is not None:
            self._hosts.release(node_id)

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

        A task not yet started is dequeued. A running task is interrupted: Ray raises
        KeyboardInterrupt in a task's process; a light task's thread on a task host gets
        TaskInterrupted (see :mod:`~lattice.executor.ray_hosts`). Either is seen only when the
        task next runs Python bytecode: a task blocked in a sleep, a socket read or C code
        would not see it until that call returns. So if the task is still running
        ``cancel_grace`` seconds later, its worker process is killed (the process runs this one
        task only); a thread cannot be killed, so a light task is then reported cancelled and
        its eventual result discarded.

        Returns False if the task had already finished; otherwise True, and the handle's
        callbacks then receive a ``TaskCancelledError`` outcome (or the task's own outcome, if
        it finished first).
        """
        if not isinstance(handle, _RayHandle):
            raise LatticeUsageError(f"not a handle of this executor: {handle!r}")
        if handle.done():
            return False
        handle.cancel_requested = True
        ray.cancel(handle.ref, force=False)
        after_grace: Callable[[], None]
        if handle.host is not None:
            # The interrupt's own result is read (and dropped) so that Ray does not report
            # it as an unhandled error if the host died meanwhile.
            handle.host.interrupt.remote(handle.task_key).future()
            after_grace = handle.abandon
        else:
            after_grace = lambda: self._force_cancel(handle)  # noqa: E731
        timer = threading.Timer(self._cancel_grace, after_grace)
        timer.daemon = True
        handle.on_ray_done(timer.cancel)
        timer.start()
        return True

    def _force_cancel(self, handle: _RayHandle) -> None:
        if handle.done() or not self._initialized:
            return
        try:
            ray.cancel(handle.ref, force=True)
        except ray.exceptions.RayError:  # the task ended or Ray went away meanwhile
            logger.warning("could not kill the worker of task %s", handle.task_key, exc_info=True)
