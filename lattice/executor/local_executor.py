"""LocalExecutor: tasks run on a thread pool in the server's process.

Concurrency is bounded by the ResourceManager (CPU, memory), not by the pool: the pool only
caps threads. I/O-bound tasks with a small ``cpu`` overlap far beyond the core count.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import (
    DoneCallback,
    ExecutorBackend,
    TaskHandle,
    TaskOutcome,
    TaskSubmission,
)
from lattice.executor.large_values import keep_in_process, keep_large_values
from lattice.executor.runner import execute
from lattice.executor.sandbox.runner import SandboxRunner

CANCELLED = TaskErrorInfo.framework("TaskCancelledError", "task was cancelled")


class _LocalHandle(TaskHandle):
    def __init__(self, task_key: str, future: Future[TaskOutcome]) -> None:
        super().__init__(task_key)
        self.future = future

    def add_done_callback(self, fn: DoneCallback) -> None:
        self.future.add_done_callback(lambda f: fn(_outcome(f)))

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> TaskOutcome:
        from concurrent.futures import wait

        done, _ = wait([self.future], timeout)
        if not done:
            raise TimeoutError(f"task {self.task_key} not done after {timeout}s")
        return _outcome(self.future)


def _outcome(future: Future[TaskOutcome]) -> TaskOutcome:
    try:
        return future.result()
    except CancelledError:
        return TaskOutcome(error=CANCELLED)


class LocalExecutor(ExecutorBackend):
    name = "local"

    def __init__(self, max_threads: int = 256, sandbox: SandboxRunner | None = None) -> None:
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._sandbox = sandbox
        self._lock = threading.Lock()

    def initialize(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._max_threads, thread_name_prefix="lattice-task"
                )

    def submit(self, submission: TaskSubmission) -> TaskHandle:
        if self._pool is None:
            self.initialize()
        assert self._pool is not None
        future = self._pool.submit(self._run, submission)
        return _LocalHandle(submission.task_key, future)

    def _run(self, submission: TaskSubmission) -> TaskOutcome:
        if self._sandbox is not None and self._sandbox.applies(submission):
            outcome = self._sandbox.run(submission)
        else:
            outcome = execute(submission, set_gpu_env=False)
        # Large outputs stay the objects they are; runs and clients get a reference.
        return keep_large_values(outcome, submission.kind, keep_in_process)

    def cancel(self, handle: TaskHandle) -> bool:
        # A thread cannot be interrupted; a queued task can. A sandboxed task's child process
        # is killed by the sandbox runner.
        assert isinstance(handle, _LocalHandle)
        if handle.future.cancel():
            return True
        if self._sandbox is not None:
            return self._sandbox.cancel(handle.task_key)
        return False

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._sandbox is not None:
            self._sandbox.close()
