"""The handles of the Ray executor's submissions, and how each learns its outcome.

* :class:`RayHandle`: a Ray task, or a Ray call to a task host; Ray reports the outcome
  through an ``ObjectRef.future()`` callback.
* :class:`ChannelHandle`: a light task sent over its host's connection (see ray.channel);
  the host's reply carries the outcome, or says to fetch it with one Ray call.
* :class:`FollowerHandle`: a task handed over before the task whose output it needs, when that
  one went over a connection (Ray cannot wait for it): it is sent the moment that output
  arrives, from the thread that received it.

Every handle settles once: with the task's outcome, or with a cancellation when the executor
stops waiting for a task it cannot stop (:meth:`Handle.abandon`).
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

import ray

from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import (
    DoneCallback,
    PendingOutput,
    TaskHandle,
    TaskOutcome,
    TaskSubmission,
    UpstreamFailed,
    when_resolved,
)
from lattice.executor.local_executor import CANCELLED
from lattice.executor.ray.payload import store_large_values
from lattice.executor.runner import error_info

if TYPE_CHECKING:
    from lattice.executor.ray.hosts import Host

logger = logging.getLogger(__name__)


# --- reading what Ray reports -----------------------------------------------------------------


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
        return _unloadable(exc.client_exc, task, _traceback(exc))
    if cancelled:
        # cancel() escalated to killing the worker: that death is the cancellation.
        return TaskOutcome(error=CANCELLED)
    if isinstance(exc, errors.RayError):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        if on_host and isinstance(exc, errors.RayActorError):
            # The task host is the worker process of its light tasks: its death is theirs.
            return lost(task, where, f"its task host process died ({type(exc).__name__}: {reason})")
        message = f"task {task} was lost on {where}: {type(exc).__name__}: {reason}"
        return TaskOutcome(error=TaskErrorInfo.framework("WorkerLostError", message), lost=True)
    logger.error("unexpected error from Ray for task %s", task, exc_info=exc)
    return TaskOutcome(error=TaskErrorInfo.framework(type(exc).__name__, str(exc)))


def _unloadable(cause: BaseException, task: str, traceback: str) -> TaskOutcome:
    message = f"the result of task {task} could not be loaded on the server: {cause}"
    return TaskOutcome(error=TaskErrorInfo(type(cause).__name__, message, traceback))


def _traceback(exc: BaseException) -> str:
    # The error Ray raises is an instance of the cause's class too, and delegates unknown
    # attributes to the cause: when Ray did not set ``traceback_str`` that lookup fails.
    return getattr(exc, "traceback_str", None) or ""


def lost(task: str, where: str, reason: str) -> TaskOutcome:
    """The outcome of a task whose worker process died under it."""
    message = f"task {task} was lost on {where}: WorkerCrashedError: {reason}"
    return TaskOutcome(error=TaskErrorInfo.framework("WorkerLostError", message), lost=True)


# --- handles ----------------------------------------------------------------------------------

CANCELLED_OUTCOME = TaskOutcome(error=CANCELLED)


class Handle(TaskHandle):
    """A submission whose outcome is settled exactly once."""

    def __init__(self, sub: TaskSubmission, where: str) -> None:
        super().__init__(sub.task_key)
        #: set by RayExecutor.cancel before it asks for the task to stop
        self.cancel_requested = False
        self.task = f"{sub.task_name} ({sub.task_key})"
        self.where = where
        self.kind = sub.kind
        self._lock = threading.Lock()
        self._settled = False
        self._over = False
        self._outcome: Future[TaskOutcome] = Future()
        #: the task's own end, even when it comes after it was abandoned
        self._ended: Future[None] = Future()

    def abandon(self) -> None:
        """Report the task cancelled now; whatever it returns later is discarded."""
        self._settle(CANCELLED_OUTCOME)

    def _settle(self, outcome: TaskOutcome) -> None:
        with self._lock:
            if self._settled:
                return  # abandoned first: this is the discarded late result
            self._settled = True
        self._outcome.set_result(outcome)

    def _end(self, outcome: TaskOutcome) -> None:
        """The task is over where it ran, with ``outcome``."""
        self._mark_ended()
        self._settle(outcome)

    def _mark_ended(self) -> None:
        with self._lock:
            if self._over:
                return
            self._over = True
        self._ended.set_result(None)

    def on_ended(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when the task is over where it ran (also after it was abandoned)."""
        self._ended.add_done_callback(lambda _f: fn())

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(outcome)`` once the task ends; at once if it already has.

        Otherwise ``fn`` runs on a thread of Ray's or of a host's connection, so it must be
        quick (post a message).
        """
        self._outcome.add_done_callback(lambda f: fn(f.result()))

    def done(self) -> bool:
        return self._outcome.done()

    def result(self, timeout: float | None = None) -> TaskOutcome:
        done, _ = wait([self._outcome], timeout)
        if not done:
            raise TimeoutError(f"task {self.task_key} not done after {timeout}s")
        return self._outcome.result()

    def _from_ray(
        self, ref: ray.ObjectRef[Any], on_host: bool, on_lost: Callable[[], None]
    ) -> None:
        """End with what Ray reports for ``ref`` (the task's outcome object); ``on_host``:
        the task ran on a task host (its death is then the host's)."""

        def done(future: Future[Any]) -> None:
            try:
                outcome = _outcome_of(future, self.task, self.where, self.cancel_requested, on_host)
            except Exception as exc:
                # The task is over whatever its report says: an outcome that cannot be read
                # is the task's error, never a task that stays running.
                logger.exception("cannot read how task %s ended", self.task)
                message = f"cannot read how task {self.task} ended: {type(exc).__name__}: {exc}"
                outcome = TaskOutcome(error=TaskErrorInfo.framework("ExecutorError", message))
            if outcome.lost:
                on_lost()
            # Large output values stay where they are: see ray.payload.
            self._end(store_large_values(outcome, ref, self.kind))

        # One future per ref: each ref.future() call registers its own fetch with Ray.
        ref.future().add_done_callback(done)


class RayHandle(Handle):
    """A Ray task, or a Ray call to a task host (``host``)."""

    def __init__(
        self,
        sub: TaskSubmission,
        ref: ray.ObjectRef[Any],
        where: str,
        host: Host | None = None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(sub, where)
        self.ref = ref
        #: the task host it was sent to, if it is not a Ray task of its own (see ray.hosts)
        self.host = host
        self._from_ray(ref, host is not None, on_lost)


class ChannelHandle(Handle):
    """A task sent over its host's connection (see ray.channel)."""

    def __init__(
        self, sub: TaskSubmission, where: str, host: Host, on_lost: Callable[[], None]
    ) -> None:
        super().__init__(sub, where)
        self.host = host
        self._on_lost = on_lost

    def report(self, outcome: Any) -> None:
        try:
            value = pickle.loads(outcome)
        except Exception as exc:  # noqa: BLE001 - e.g. a module the server lacks
            self._end(_unloadable(exc, self.task, error_info(exc, skip_frames=0).traceback))
            return
        self._end(value)

    def report_kept(self) -> None:
        self._from_ray(self.host.actor.take.remote(self.task_key), True, self._on_lost)

    def report_lost(self, reason: str) -> None:
        if self.cancel_requested:
            self._end(CANCELLED_OUTCOME)
            return
        self._on_lost()
        self._end(lost(self.task, self.where, reason))


class FollowerHandle(Handle):
    """A task waiting for outputs of tasks sent over a connection (``pending``), sent with
    ``send`` once they are all in. If one failed, the task never runs: it ends with
    :class:`UpstreamFailed`, as a pipelined task whose upstream failed does on Ray."""

    def __init__(
        self,
        sub: TaskSubmission,
        where: str,
        pending: dict[str, PendingOutput],
        send: Callable[[TaskSubmission], Handle],
    ) -> None:
        super().__init__(sub, where)
        self._send = send
        self._sent: Handle | None = None
        when_resolved(sub, pending, self._dispatch, self._upstream_failed)

    @property
    def sent(self) -> Handle | None:
        """The handle of the task as sent, once it has been."""
        return self._sent

    def _upstream_failed(self, exc: UpstreamFailed) -> None:
        self._end(TaskOutcome(error=error_info(exc, skip_frames=0)))

    def _dispatch(self, ready: TaskSubmission) -> None:
        error: TaskOutcome | None = None
        with self._lock:
            if self.cancel_requested:
                return
            try:
                self._sent = sent = self._send(ready)
            except Exception as exc:  # noqa: BLE001 - e.g. the executor shut down meanwhile
                message = f"task {self.task} was not started: {type(exc).__name__}: {exc}"
                error = TaskOutcome(error=TaskErrorInfo.framework("ExecutorError", message))
        if error is not None:
            self._end(error)
            return
        sent.on_ended(self._mark_ended)
        sent.add_done_callback(self._settle)

    def cancel_unsent(self) -> bool:
        """Cancel it if it has not been sent yet (then it never will be); False if it has."""
        with self._lock:
            if self._sent is not None:
                return False
            self.cancel_requested = True
        self._end(CANCELLED_OUTCOME)
        return True
