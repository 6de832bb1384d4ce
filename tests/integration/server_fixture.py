"""Real Lattice servers for integration tests, started and stopped without sleeps.

* :class:`InProcessServer`: ``create_app(settings)`` served by ``uvicorn.Server`` in a thread
  of the test process, on a socket bound to a free loopback port before the server starts.
  Readiness is an event set from the server's own ``startup()``.
* :class:`HeadProcess`: ``python -m lattice.cli.cli start --head ...`` as a child process;
  readiness is uvicorn's "Application startup complete" line (and the "Uvicorn running on"
  line after it, once the port is bound), read by a thread.
* :class:`Gate`: a loopback socket a task blocks on until the test lets it through.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from lattice.api.connection import server_options
from lattice.api.server import create_app
from lattice.config.settings import ServerSettings

READY_LINE = "Application startup complete"
#: uvicorn binds its port after the lifespan started, then logs this
LISTENING_LINE = "Uvicorn running on"
SHUTDOWN_LINE = "Application shutdown complete"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: bodies over this many bytes get 413 from the shared in-process ``api_server``
TEST_MAX_BODY_BYTES = 256 * 1024
#: the token of ``token_server``, and the one browser origin it allows
TEST_TOKEN = "test-token-3f9a-5e27d1"
CORS_ORIGIN = "http://dashboard.example"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _SignallingServer(uvicorn.Server):
    """A uvicorn server that reports the end of its startup on a threading.Event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            # Set on failure too (then ``started`` stays False), so start() never hangs.
            self.startup_done.set()


class InProcessServer:
    """A Lattice API server on a background thread of this process.

    ``settings`` defaults to the local executor with metrics on; its ``port`` is replaced by
    the free port the server listens on. ``parts`` go to ``create_app`` (a store, an
    executor of the caller's own).
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        start_timeout: float = 30.0,
        **parts: Any,
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        base = settings or ServerSettings(executor="local", metrics_enabled=True)
        self.settings = replace(base, port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._start_timeout = start_timeout
        config = uvicorn.Config(
            create_app(self.settings, **parts),
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=3,
            **server_options(self.settings),
        )
        self._server = _SignallingServer(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"lattice-test-server-{self.port}",
            daemon=True,
        )

    def start(self) -> InProcessServer:
        self._thread.start()
        if not self._server.startup_done.wait(self._start_timeout) or not self._server.started:
            self.stop()
            raise RuntimeError(f"in-process Lattice server on {self.url} did not start")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"in-process Lattice server on {self.url} did not stop")

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class HeadProcess:
    """``lattice start --head`` (or any CLI arguments) as a child process.

    The child's stdout and stderr are read line by line into :attr:`lines` by a thread;
    :meth:`start` blocks until "Application startup complete" and then "Uvicorn running on"
    (the port is bound only after the startup line), or until the child exits.
    """

    def __init__(
        self,
        cli_args: Sequence[str],
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        wrap: Sequence[str] = (),
        data_dir: str | Path | None = None,
    ) -> None:
        """``wrap``: a command the CLI runs under, e.g. ``ip netns exec NAME``. ``data_dir``:
        the head's data directory (its store); by default a fresh one of its own, removed
        when it stops. A head started again on the same ``data_dir`` resumes what the first
        one left."""
        self.args = [*wrap, sys.executable, "-m", "lattice.cli.cli", *cli_args]
        #: the API port given in ``cli_args`` and the address it is reached at, for :attr:`url`
        self.port = port
        self.host = host
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="lattice-head-"))
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "LATTICE_DATA_DIR": str(self.data_dir),
            **(env or {}),
        }
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._eof = threading.Event()
        self._new_line = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "HeadProcess(port=...) was not given"
        return f"http://{self.host}:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def launch(self) -> HeadProcess:
        """Start the child without waiting for anything."""
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def start(self, timeout: float = 60.0) -> HeadProcess:
        """Launch the child and block until it serves; raise with its output if it does not."""
        self.launch()
        if not self._ready.wait(timeout) or not self.running:
            output = self.output
            self.stop(signal.SIGKILL, timeout=10)
            raise RuntimeError(f"lattice head did not start within {timeout}s:\n{output}")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        started = False
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
            started = started or READY_LINE in line
            if started and LISTENING_LINE in line:
                self._ready.set()
        self._ready.set()  # EOF: the child exited; start() sees that
        with self._new_line:
            self._eof.set()
            self._new_line.notify_all()

    def wait_for_line(self, text: str, timeout: float) -> str:
        """Block until the child prints a line containing ``text``; return that line.

        Raises:
            TimeoutError: no such line within ``timeout`` seconds, or the child exited.
        """

        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._new_line:
            self._new_line.wait_for(lambda: found() is not None or self._eof.is_set(), timeout)
            line = found()
        if line is None:
            raise TimeoutError(f"the head did not print {text!r}:\n{self.output}")
        return line

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself; return its exit code, with output read."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._eof.wait(timeout)
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
        """Send ``sig`` and wait for the exit code; kill the process group after ``timeout``.

        Returns the exit code, or None if the process had to be killed (or never started).
        """
        proc = self.proc
        if proc is None:
            return None
        try:
            return self._stop(proc, sig, timeout)
        finally:
            if self._own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _stop(self, proc: subprocess.Popen[str], sig: int, timeout: float) -> int | None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                self._eof.wait(10)
                return None
        self._eof.wait(10)
        return proc.returncode

    def __enter__(self) -> HeadProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def start_local_head(
    *extra: str, data_dir: str | Path | None = None, port: int | None = None
) -> HeadProcess:
    """``lattice start --head --executor local`` on a free port (or ``port``), serving when
    returned; ``data_dir`` as for HeadProcess."""
    port = port or free_port()
    head = HeadProcess(
        ["start", "--head", "--executor", "local", "--port", str(port), *extra],
        port=port,
        data_dir=data_dir,
    )
    return head.start(timeout=60)


class Gate:
    """A loopback socket a task can block on (see ``pass_gate`` in the test modules) until the
    test opens the gate: deterministic "the task is running now" without sleeps, in this
    process or in a head's."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

    def open(self, tasks: int = 1, timeout: float = 30.0) -> None:
        """Let ``tasks`` waiting tasks through (waits for each to arrive)."""
        self._sock.settimeout(timeout)
        for _ in range(tasks):
            conn, _ = self._sock.accept()
            with conn:
                conn.sendall(b"go")

    def close(self) -> None:
        """Fail every task still waiting (their connection is refused or reset)."""
        self._sock.close()
