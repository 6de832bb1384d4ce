"""The fork server: ``python -m lattice.executor.sandbox.forkserver <control-fd>``.

Starting a Python interpreter and importing lattice costs hundreds of milliseconds; forking
one that already has costs about one. So each :class:`SandboxRunner` starts one fork server,
with a clean environment, in its own session, and asks it for one supervisor per task (see
:mod:`.child`). The fork server never runs task code: every supervisor is a fresh fork of a
process that has only imported lattice.

Protocol. The control channel is a ``SOCK_SEQPACKET`` pair; each message carries one file
descriptor (``SCM_RIGHTS``): the supervisor's end of a fresh socket pair whose other end the
server keeps. The fork server forks a supervisor on it, and when it reaps that supervisor
sends a :data:`~.wire.STATUS` frame on the same socket and closes it. The server therefore
reads its socket until EOF and then knows everything: the report (if the supervisor lived to
send one) and how the supervisor ended. A supervisor that died abnormally has its process
group and cgroup killed by the fork server, which is also a subreaper and kills any orphan
that lands on it.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading

import psutil

from lattice.executor.sandbox import _linux, child
from lattice.executor.sandbox.cgroup import TaskCgroup, cgroup_base
from lattice.executor.sandbox.confine import preloaded_module_dirs
from lattice.executor.sandbox.wire import STATUS, frame

log = logging.getLogger(__name__)


# --- inside the fork server process ---------------------------------------------------------


class _Server:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.supervisors: dict[int, socket.socket] = {}
        self.cgroups = cgroup_base()

    def spawn(self, fd: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()
                os.dup2(fd, 3)
                # Nothing of the fork server (its control socket, other tasks' sockets) stays.
                os.closerange(4, 1 << 20)
                child.serve(socket.socket(fileno=3), self.cgroups)
                code = 0
            finally:
                os._exit(code)
        self.supervisors[pid] = socket.socket(fileno=fd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            sock = self.supervisors.pop(pid, None)
            if sock is None:
                continue  # an orphan of some task, killed in _clean_up_after
            clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if not clean:
                self._clean_up_after(pid)
            doc = {
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
            with contextlib.suppress(OSError):
                sock.sendall(frame(STATUS, json.dumps(doc).encode()))
            sock.close()

    def _clean_up_after(self, supervisor: int) -> None:
        """A supervisor died before cleaning up: kill its group, cgroup and orphans."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(supervisor, signal.SIGKILL)
        if self.cgroups is not None:
            try:
                TaskCgroup.at(self.cgroups, supervisor).destroy()
            except OSError as exc:
                log.warning("could not remove the cgroup of supervisor %d: %s", supervisor, exc)
        for proc in psutil.Process().children():
            if proc.pid not in self.supervisors:
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def run(self) -> None:
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        sel = selectors.DefaultSelector()
        sel.register(self.control, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        fd_space = socket.CMSG_SPACE(array.array("i").itemsize)
        while True:
            for key, _ in sel.select():
                if key.fileobj is wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while wake_r.recv(4096):
                            pass
                    self.reap()
                    continue
                msg, ancdata, _flags, _addr = self.control.recvmsg(16, fd_space)
                if not msg:
                    return  # the server closed the channel or died: nothing more to start
                for level, kind, data in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = array.array("i")
                        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                        for fd in fds:
                            self.spawn(fd)


def _preload() -> None:
    """Import now what every task would otherwise import: the seccomp binding (whose library
    lookup runs ldconfig) and the executor."""
    with contextlib.suppress(ImportError, RuntimeError, OSError):
        import pyseccomp  # noqa: F401
    import lattice.executor.runner  # noqa: F401

    preloaded_module_dirs()


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    _preload()
    _Server(control).run()
    return 0


# --- the server's handle ---------------------------------------------------------------------


class ForkServer:
    """The server's side: starts the fork server on first use, restarts it if it died.

    Thread-safe. :meth:`connect` returns the server's end of a new supervisor's socket.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-m", __name__, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,  # tasks' output is forwarded there, as for in-process tasks
                cwd="/",
                env=self._env,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        self._control = ours

    def connect(self) -> socket.socket:
        """A socket to a new supervisor. Raises OSError if the fork server cannot be reached
        even after a restart."""
        ours, theirs = socket.socketpair()
        with theirs, self._lock:
            for attempt in range(2):
                if self._control is None or self._proc is None or self._proc.poll() is not None:
                    self._stop_locked()
                    self._start()
                assert self._control is not None
                try:
                    self._control.sendmsg(
                        [b"S"],
                        [
                            (
                                socket.SOL_SOCKET,
                                socket.SCM_RIGHTS,
                                array.array("i", [theirs.fileno()]),
                            )
                        ],
                    )
                    return ours
                except OSError:
                    if attempt == 1:
                        raise
                    self._stop_locked()
        raise AssertionError("unreachable")

    def _stop_locked(self) -> None:
        if self._control is not None:
            self._control.close()  # the fork server exits when its channel closes
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the fork server. Running tasks are not affected; new ones restart it."""
        with self._lock:
            self._stop_locked()


def fork_server_environment(python_path: str) -> dict[str, str]:
    """The fork server's environment: nothing of the server's (tokens, secrets, Ray
    addresses) except what locating programs and text encoding need."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": "/nonexistent",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": python_path,
    }


if __name__ == "__main__":
    sys.exit(main())
