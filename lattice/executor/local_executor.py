"""LocalExecutor: tasks run on a thread pool in the server's process.

Concurrency is bounded by the ResourceManager (CPU, memory), not by the pool: the pool only
caps threads. I/O-bound tasks with a small ``cpu`` overlap far beyond the core count.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor

from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import (
    DoneCallback,
    ExecutorBackend,
    TaskHandle,
    TaskOutcome,
    TaskSubmission,
    UpstreamFailed,
    pending_outputs,
    when_resolved,
)
from lattice.executor.large_values import keep_in_process, keep_large_values
from lattice.executor.runner import error_info, execute
from lattice.executor.sandbox.runner import SandboxRunner

CANCELLED = TaskErrorInfo.framework("TaskCancelledError", "task was cancelled")


class _LocalHandle(TaskHandle):
    def __init__(self, task_key: str, future: Future[TaskOutcome]) -> None:
        super().__init__(task_key)
        #: the task's outcome as reported: completed by the task's thread, or at once by
        #: :meth:`LocalExecutor.cancel` (the thread's late result is then discarded)
        self.future = future
        #: the task's cancellation token (TaskContext.is_cancelled)
        self.cancelled = threading.Event()

    def add_done_callback(self, fn: DoneCallback) -> None:
        self.future.add_done_callback(lambda f: fn(_outcome(f)))

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> TaskOutcome:
        try:
            # Waits; a cancelled future answers at once (also one the pool never saw).
            self.future.exception(timeout)
        except CancelledError:
            pass
        except TimeoutError:
            raise TimeoutError(f"task {self.task_key} not done after {timeout}s") from None
        return _outcome(self.future)


def _outcome(future: Future[TaskOutcome]) -> TaskOutcome:
    try:
        return future.result()
    except CancelledError:
        return TaskOutcome(error=CANCELLED)
    except Exception as exc:  # noqa: BLE001 - the executor's own failure still ends the task
        message = f"the executor failed to run the task: {type(exc).__name__}: {exc}"
        return TaskOutcome(error=TaskErrorInfo.framework("ExecutorError", message))


class LocalExecutor(ExecutorBackend):
    """Runs submissions on a thread pool of the head's process.

    It pipelines (see ExecutorBackend.pipelines): a submission whose inputs include outputs of
    tasks still running is queued on the pool the moment the last of them finishes, from that
    task's own thread, which is usually the thread that runs it next.
    """

    name = "local"
    pipelines = True

    def __init__(self, max_threads: int = 256, sandbox: SandboxRunner | None = None) -> None:
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._sandbox = sandbox
        self._lock = threading.Lock()
        #: held while a task's function and inputs are unpickled (see runner.execute)
        self._decoding = threading.Lock()

    def initialize(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._max_threads, thread_name_prefix="lattice-task"
                )

    def submit(self, submission: TaskSubmission) -> TaskHandle:
        if self._pool is None:
            self.initialize()
        pool = self._pool
        assert pool is not None
        handle = _LocalHandle(submission.task_key, Future())
        future = handle.future

        def ready(resolved: TaskSubmission) -> None:
            try:
                pool.submit(self._run_into, resolved, handle)
            except RuntimeError as exc:  # the executor was shut down while it waited
                if future.set_running_or_notify_cancel():
                    message = f"task {submission.task_name} was not started: {exc}"
                    future.set_result(
                        TaskOutcome(error=TaskErrorInfo.framework("ExecutorError", message))
                    )

        def failed(exc: UpstreamFailed) -> None:
            if future.set_running_or_notify_cancel():
                future.set_result(TaskOutcome(error=error_info(exc, skip_frames=0)))

        pending = pending_outputs(submission)
        if pending:
            when_resolved(submission, pending, ready, failed)
        else:
            ready(submission)
        return handle

    def _run_into(self, submission: TaskSubmission, handle: _LocalHandle) -> None:
        future = handle.future
        if not future.set_running_or_notify_cancel():
            return  # cancelled before it started
        try:
            outcome = self._run(submission, handle.cancelled)
        except BaseException as exc:
            with contextlib.suppress(InvalidStateError):  # already reported cancelled
                future.set_exception(exc)  # reported as the task's ExecutorError (see _outcome)
            raise
        if handle.cancelled.is_set():
            # A task that saw its token and returned was cancelled, whatever it returned.
            outcome = TaskOutcome(error=CANCELLED, duration=outcome.duration)
        with contextlib.suppress(InvalidStateError):  # reported cancelled already: discarded
            future.set_result(outcome)

    def _run(self, submission: TaskSubmission, cancelled: threading.Event) -> TaskOutcome:
        if self._sandbox is not None and self._sandbox.applies(submission):
            outcome = self._sandbox.run(submission)
        else:
            outcome = execute(
                submission, set_gpu_env=False, decoding=self._decoding, cancelled=cancelled
            )
        # Large outputs stay the objects they are; runs and clients get a reference.
        return keep_large_values(outcome, submission.kind, keep_in_process)

    def cancel(self, handle: TaskHandle) -> bool:
        """Stop a task: a queued one is dropped; a running one has its token set
        (TaskContext.is_cancelled). A sandboxed task's child process is then killed by the
        sandbox runner and the task reported cancelled once it is gone. A thread cannot be
        killed: the task is reported cancelled at once (its resources are released) and its
        result, whenever it comes, is discarded.

        Returns False if the task had already ended; otherwise True.
        """
        assert isinstance(handle, _LocalHandle)
        handle.cancelled.set()
        if handle.future.cancel():
            return True
        if handle.future.done():
            return False
        if self._sandbox is not None and self._sandbox.cancel(handle.task_key):
            return True
        try:
            handle.future.set_result(TaskOutcome(error=CANCELLED))
        except InvalidStateError:  # it ended meanwhile
            return False
        return True

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._sandbox is not None:
            self._sandbox.close()
