"""Start a head as a child process and stop it again: for examples, benchmarks and scripts.

``with LocalHead(executor="ray") as head: LatticeClient(head.url)``. Readiness is read from the
server's own log line, not guessed with sleeps. Such a head is a throwaway: unless ``data_dir``
(or ``--data-dir``/``--store`` in ``extra_args``) says otherwise, it keeps its store in a
temporary directory of its own, removed when it stops, so scripts and benchmarks neither read
nor grow the user's ``~/.lattice``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from types import TracebackType

from lattice.exceptions import LatticeWorldError
from lattice.utils.network import free_port

#: uvicorn prints this once the port is bound (after "Application startup complete")
READY_LINE = "Uvicorn running on"


class LocalHead:
    def __init__(
        self,
        executor: str = "ray",
        *,
        num_cpus: float | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 120.0,
        quiet: bool = True,
        data_dir: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._args = [
            sys.executable,
            "-m",
            "lattice.cli.cli",
            "--log-level",
            "WARNING" if quiet else "INFO",
        ]
        self._args += ["start", "--head", "--executor", executor, "--port", str(self.port)]
        if executor == "ray":
            self._args += ["--ray-port", str(free_port())]
        if num_cpus is not None:
            self._args += ["--num-cpus", str(num_cpus)]
        self._args += list(extra_args)
        #: the temporary data directory this head made for itself (removed by stop)
        self._own_data_dir: str | None = None
        if data_dir is not None:
            self._args += ["--data-dir", data_dir]
        elif not {"--data-dir", "--store"} & set(extra_args):
            self._own_data_dir = tempfile.mkdtemp(prefix="lattice-head-")
            self._args += ["--data-dir", self._own_data_dir]
        self._timeout = start_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()

    @property
    def pid(self) -> int | None:
        """The head process's id while it runs (for tools that watch its memory), else None."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LocalHead:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            self._args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(self._timeout) or self._proc.poll() is not None:
            self.stop()
            raise LatticeWorldError(
                f"head did not start within {self._timeout}s:\n" + "".join(self.output[-30:])
            )
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.output.append(line)
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()  # the process ended: unblock start(), which then reports it

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int | None:
        """Signal the head and wait for it; kill it if it does not stop in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    return proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
        finally:
            if self._own_data_dir is not None:
                shutil.rmtree(self._own_data_dir, ignore_errors=True)
                self._own_data_dir = None

    def __enter__(self) -> LocalHead:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
