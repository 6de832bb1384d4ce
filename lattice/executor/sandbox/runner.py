"""SandboxRunner: runs a submission in an isolated child (subprocess / seccomp / docker).

Used by the executors from a thread pool: :meth:`SandboxRunner.run` blocks its thread until
the child ends, :meth:`SandboxRunner.cancel` may come from any thread. The runner is also
shipped inside Ray tasks, so it pickles as its configuration only; the fork server and the
table of running children belong to one process and are rebuilt on first use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import cloudpickle

import lattice
from lattice.exceptions import LatticeUsageError, TaskErrorInfo
from lattice.executor.base import TaskOutcome, TaskSubmission
from lattice.executor.runner import execute
from lattice.executor.sandbox import verdict
from lattice.executor.sandbox.forkserver import ForkServer, fork_server_environment
from lattice.executor.sandbox.live import LiveChild
from lattice.executor.sandbox.seccomp_policy import seccomp_unavailable
from lattice.executor.sandbox.wire import (
    REPORT,
    REQUEST,
    STATUS,
    FrameParser,
    decode_outcome,
    decode_report,
    frame,
)
from lattice.vocabulary import SandboxLevel, SandboxSpec


def _import_path() -> list[str]:
    """The server's import path, so the child imports lattice and the user's modules alike."""
    entries: list[str] = []
    package_root = str(Path(lattice.__file__).resolve().parent.parent)
    for entry in [package_root, *sys.path]:
        entry = os.path.abspath(entry or os.getcwd())
        if entry not in entries and os.path.exists(entry):
            entries.append(entry)
    return entries


def child_environment(
    submission: TaskSubmission, workdir: str, import_path: list[str]
) -> dict[str, str]:
    """The task's whole environment: nothing of the server's (tokens, secrets, Ray
    addresses) except what locating programs, text encoding, imports and GPUs need."""
    env = fork_server_environment(os.pathsep.join(import_path))
    env.update(HOME=workdir, TMPDIR=workdir)
    if submission.node.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, submission.node.gpu_ids))
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


class SandboxRunner:
    """Isolates tasks according to a server-wide default and each task's own request.

    ``default`` is the server's :class:`SandboxSpec`; a task's ``sandbox`` can only make it
    stricter (see :meth:`effective_spec`). Raises :class:`LatticeUsageError` when the default
    level cannot work here: docker without a reachable engine, seccomp without libseccomp,
    subprocess or seccomp off Linux.

    Results of sandboxed tasks that JSON cannot hold come back as
    :class:`~lattice.executor.sandbox.wire.SealedValue` unless the default level is ``none``
    (a server that runs tasks in-process gains nothing by keeping them sealed).
    """

    def __init__(self, default: SandboxSpec) -> None:
        self.default = default
        self.check_level(default.level)
        self._reset()

    def _reset(self) -> None:
        self._live: dict[str, LiveChild] = {}
        self._lock = threading.Lock()
        self._fork_server: ForkServer | None = None

    # -- pickling: configuration only -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"default": self.default}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # No availability check here: a Ray worker reports a missing engine per task instead.
        self.default = state["default"]
        self._reset()

    @staticmethod
    def check_level(level: SandboxLevel) -> None:
        """Raise :class:`LatticeUsageError` with the reason if ``level`` cannot run here."""
        reason = SandboxRunner.unavailable(level)
        if reason is not None:
            raise LatticeUsageError(f"sandbox level {level.value!r} cannot be used here: {reason}")

    @staticmethod
    def unavailable(level: SandboxLevel) -> str | None:
        """None if ``level`` can run on this machine, else the reason."""
        if level is SandboxLevel.NONE:
            return None
        if level is SandboxLevel.DOCKER:
            from lattice.executor.sandbox.docker import docker_available

            return docker_available()
        if not sys.platform.startswith("linux"):
            return f"it needs Linux (this is {sys.platform}); use 'docker' or 'none'"
        if level is SandboxLevel.SECCOMP:
            return seccomp_unavailable()
        return None

    # -- the interface the executors use ----------------------------------------------------------

    def effective_spec(self, submission: TaskSubmission) -> SandboxSpec:
        """The stricter of the server default and the task's request, with the limits every
        isolated child gets (open files, file size, processes) filled in."""
        return self.default.stricter(submission.sandbox).with_defaults()

    def applies(self, submission: TaskSubmission) -> bool:
        return self.effective_spec(submission).isolated

    def run(self, submission: TaskSubmission) -> TaskOutcome:
        """Run ``submission`` at its effective level and block until it ends.

        Never raises for the task's failures: limits, forbidden calls, a dead child and
        cancellation come back as the outcome's error (types in :mod:`.verdict`).
        """
        spec = self.effective_spec(submission)
        if not spec.isolated:
            return execute(submission, set_gpu_env=False)
        reason = self.unavailable(spec.level)
        if reason is not None:
            message = f"sandbox level {spec.level.value!r} is not available: {reason}"
            return TaskOutcome(error=TaskErrorInfo.framework(verdict.SANDBOX_ERROR, message))
        open_values = self.default.level is SandboxLevel.NONE
        live = LiveChild()
        with self._lock:
            self._live[submission.task_key] = live
        try:
            if spec.level is SandboxLevel.DOCKER:
                outcome = self._run_docker(submission, spec, live, open_values)
            else:
                outcome = self._run_process(submission, spec, live, open_values)
        finally:
            with self._lock:
                if self._live.get(submission.task_key) is live:
                    del self._live[submission.task_key]
        return verdict.cancelled() if live.cancelled else outcome

    def cancel(self, task_key: str) -> bool:
        """Kill the child running ``task_key`` and everything it started. True if it was
        running; its :meth:`run` then returns a ``TaskCancelledError`` outcome once the
        child and its processes are gone."""
        with self._lock:
            live = self._live.get(task_key)
        return live is not None and live.cancel()

    def close(self) -> None:
        """Stop the fork server (running tasks finish; a later :meth:`run` starts a new one)."""
        with self._lock:
            fork_server, self._fork_server = self._fork_server, None
        if fork_server is not None:
            fork_server.close()

    # -- internals -------------------------------------------------------------------------------

    def _run_docker(
        self, submission: TaskSubmission, spec: SandboxSpec, live: LiveChild, open_values: bool
    ) -> TaskOutcome:
        from lattice.executor.sandbox.docker import DockerSandbox

        # The server pulls its own image (or the default), never one a task names.
        task_image = submission.sandbox.docker_image if submission.sandbox else None
        allow_pull = self.default.docker_image is not None or task_image is None
        return DockerSandbox().run(
            submission, spec, live, open_values=open_values, allow_pull=allow_pull
        )

    def _fork(self) -> ForkServer:
        with self._lock:
            if self._fork_server is None:
                self._fork_server = ForkServer(
                    fork_server_environment(os.pathsep.join(_import_path()))
                )
            return self._fork_server

    def _run_process(
        self, submission: TaskSubmission, spec: SandboxSpec, live: LiveChild, open_values: bool
    ) -> TaskOutcome:
        workdir = tempfile.mkdtemp(prefix="lattice-task-")
        try:
            import_path = _import_path()
            header = {
                "spec": spec.to_dict(),
                "workdir": workdir,
                "env": child_environment(submission, workdir, import_path),
                "sys_path": import_path,
            }
            request = frame(
                REQUEST, json.dumps(header).encode() + b"\n" + cloudpickle.dumps(submission)
            )
            try:
                sock = self._fork().connect()
            except OSError as exc:
                message = f"the sandbox fork server could not be started: {exc}"
                return TaskOutcome(error=TaskErrorInfo.framework(verdict.SANDBOX_ERROR, message))
            with sock:
                # Cancelling hangs up: the supervisor then kills the task and everything it
                # started, and our socket reaches EOF only once they are all gone.
                live.arm(lambda: _hang_up(sock))
                with contextlib.suppress(OSError):  # a dead supervisor: what we read says why
                    sock.sendall(request)
                # The report comes after the supervisor has reaped every process of the
                # task, so there is no need to wait for the supervisor's own exit as well.
                parser = FrameParser()
                with contextlib.suppress(OSError):  # reset by a dying supervisor: judged below
                    while parser.first(REPORT) is None and (chunk := sock.recv(1 << 20)):
                        parser.feed(chunk)
                live.finish()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return self._judge(spec, parser, open_values)

    @staticmethod
    def _judge(spec: SandboxSpec, parser: FrameParser, open_values: bool) -> TaskOutcome:
        report = parser.first(REPORT)
        if report is None:
            status = parser.first(STATUS)
            if status is None:
                return TaskOutcome(
                    error=verdict.explain_lost_supervisor(None, "the sandbox fork server went away")
                )
            doc = json.loads(status)  # written by the fork server, not by the task
            returncode = -int(doc["signal"]) if doc.get("signal") else doc.get("exit_code")
            return TaskOutcome(error=verdict.explain_lost_supervisor(returncode, "no report"))
        try:
            end, raw = decode_report(report)
            outcome = None if raw is None else decode_outcome(raw, open_values=open_values)
        except ValueError as exc:
            message = f"the task's outcome could not be read: {exc}"
            return TaskOutcome(error=TaskErrorInfo.framework(verdict.SANDBOX_ERROR, message))
        return verdict.judge(spec, end, outcome)


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
