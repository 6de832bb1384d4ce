"""The two processes of one sandboxed task: the supervisor and the task process.

The fork server (:mod:`.forkserver`) forks a *supervisor* per task and hands it a socket to
the server. The supervisor reads the request, forks the *task process*, waits for it, kills
whatever the task left running, and sends a report. The task process confines itself
(limits, no capabilities, Landlock and seccomp at that level), only then unpickles the
submission, runs it with :func:`~lattice.executor.runner.execute`, and sends the outcome back
to the supervisor as JSON.

Why two: the task's parent is the supervisor, not the server. A task that kills its parent
kills only the supervisor, and the server reports that. The supervisor is a child subreaper,
so every process the task starts stays in its tree and is killed at the end; and it observes
the task's exit status and CPU time itself rather than trusting the task. When the server
closes its end of the socket (cancel, or the server died), the supervisor kills the task.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome
from lattice.executor.runner import error_info, execute
from lattice.executor.sandbox import _linux
from lattice.executor.sandbox.cgroup import TaskCgroup
from lattice.executor.sandbox.confine import confine
from lattice.executor.sandbox.wire import (
    OUTCOME,
    REPORT,
    REQUEST,
    ChildEnd,
    FrameParser,
    encode_outcome,
    encode_report,
    frame,
    unseal_submission,
    write_all,
)
from lattice.vocabulary import SandboxSpec

_RESULT_FD = 3
_TAIL_BYTES = 8192
_REAP_DEADLINE = 10.0


def _send_outcome(outcome: TaskOutcome) -> None:
    write_all(_RESULT_FD, frame(OUTCOME, encode_outcome(outcome)))


def _task_main(
    spec: SandboxSpec,
    workdir: str,
    payload: bytes,
    result_w: int,
    output_w: int,
    cgroup: TaskCgroup | None,
) -> None:
    """Body of the task process. Never returns."""
    try:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if cgroup is not None:
            cgroup.join()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output_w, 1)
        os.dup2(output_w, 2)
        os.dup2(result_w, _RESULT_FD)
        # Only stdio and the result pipe survive: no server socket, no Ray fd, no supervisor's.
        os.closerange(_RESULT_FD + 1, 1 << 20)
        # Line by line, so that output up to a crash or os._exit reaches the tail we report.
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
        confine(spec, workdir, in_cgroup=cgroup is not None)
    except BaseException as exc:  # noqa: BLE001 - nothing of the task may run unconfined
        message = f"the sandbox could not be set up: {type(exc).__name__}: {exc}"
        _send_outcome(TaskOutcome(error=TaskErrorInfo.framework("SandboxError", message)))
        os._exit(0)
    try:
        submission = unseal_submission(cloudpickle.loads(payload))
    except BaseException as exc:  # noqa: BLE001 - e.g. a module of the task is not importable here
        outcome = TaskOutcome(error=error_info(exc, skip_frames=0))
    else:
        outcome = execute(submission, set_gpu_env=True)
    _send_outcome(outcome)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    # Skip interpreter shutdown: non-daemon threads or atexit hooks of the task must not keep
    # the process alive once its outcome is sent.
    os._exit(0)


class _Pump(threading.Thread):
    """Collects the task's outcome, forwards its output to our stderr (keeping a tail), and
    kills the task when the server hangs up."""

    def __init__(self, task_pid: int, result_r: int, output_r: int, server: socket.socket) -> None:
        super().__init__(name="lattice-sandbox-pump", daemon=True)
        self._task_pid = task_pid
        self._result_r = result_r
        self._output_r = output_r
        self._server = server
        self.result = FrameParser()
        self.tail = bytearray()

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._result_r, selectors.EVENT_READ)
        sel.register(self._output_r, selectors.EVENT_READ)
        sel.register(self._server.fileno(), selectors.EVENT_READ)
        pipes = 2
        while pipes:
            for key, _ in sel.select():
                fd = int(key.fd)
                if fd == self._server.fileno():
                    # The server sends nothing after the request: readable means it hung up.
                    sel.unregister(fd)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._task_pid, signal.SIGKILL)
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    os.close(fd)
                    pipes -= 1
                elif fd == self._result_r:
                    self.result.feed(chunk)
                else:
                    self._forward(chunk)
        sel.close()

    def _forward(self, chunk: bytes) -> None:
        self.tail += chunk
        del self.tail[:-_TAIL_BYTES]
        with contextlib.suppress(OSError):
            write_all(2, chunk)


def _children() -> list[int]:
    """Our direct children (CONFIG_PROC_CHILDREN), without scanning all of /proc."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except FileNotFoundError:
        return [p.pid for p in psutil.Process().children()]
    return pids


def _reap_descendants(cgroup: TaskCgroup | None) -> None:
    """Kill every process the task left behind and collect them.

    As a child subreaper the supervisor inherits every orphan of the task: killing its
    direct children and reaping them hands it their children, until none are left, whatever
    sessions or groups they moved to.
    """
    if cgroup is not None:
        cgroup.kill_all()
    end = time.monotonic() + _REAP_DEADLINE
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        for pid in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > end:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, 0)  # at least one is dying; the next pass kills what it left


def _read_request(server: socket.socket) -> tuple[dict[str, Any], bytes]:
    parser = FrameParser()
    while parser.first(REQUEST) is None:
        chunk = server.recv(1 << 20)
        if not chunk:
            raise EOFError("the server hung up before sending the task")
        parser.feed(chunk)
    data = parser.first(REQUEST)
    assert data is not None
    head, _, payload = data.partition(b"\n")
    return json.loads(head), payload


def _enter_task_context(header: dict[str, Any]) -> None:
    """The per-task part of the environment; the fork server's own is already clean."""
    workdir = str(header["workdir"])
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in header["env"].items()})
    sys.path[:] = [str(p) for p in header["sys_path"]]


def supervise(server: socket.socket, cgroup_base: Path | None) -> tuple[ChildEnd, bytes | None]:
    header, payload = _read_request(server)
    _enter_task_context(header)
    spec = SandboxSpec.from_dict(header["spec"])
    workdir = str(header["workdir"])
    _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
    cgroup = None
    if cgroup_base is not None and spec.max_processes:
        cgroup = TaskCgroup.create(cgroup_base, os.getpid(), spec.max_processes)
    result_r, result_w = os.pipe()
    output_r, output_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(result_r)
            os.close(output_r)
            _task_main(spec, workdir, payload, result_w, output_w, cgroup)
        finally:
            os._exit(1)
    os.close(result_w)
    os.close(output_w)
    pump = _Pump(pid, result_r, output_r, server)
    pump.start()
    _, status, usage = os.wait4(pid, 0)
    _reap_descendants(cgroup)
    pump.join()
    limit_hit = cgroup.limit_hit() if cgroup is not None else False
    if cgroup is not None:
        cgroup.destroy()
    end = ChildEnd(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss_kb=usage.ru_maxrss,
        output_tail=pump.tail.decode("utf-8", "replace"),
        process_limit_hit=limit_hit,
    )
    return end, pump.result.first(OUTCOME)


def serve(server: socket.socket, cgroup_base: Path | None) -> None:
    """Supervise one task over ``server`` and send the report. Runs in a fresh fork of the
    fork server, which is single-threaded and clean."""
    try:
        end, outcome = supervise(server, cgroup_base)
    except Exception:  # noqa: BLE001 - whatever broke, the server gets it in the report
        end, outcome = ChildEnd(supervisor_error=traceback.format_exc()), None
    with contextlib.suppress(OSError):  # the server may have hung up (cancel)
        server.sendall(frame(REPORT, encode_report(end, outcome)))
