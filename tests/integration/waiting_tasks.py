"""Tasks that wait where the test says, and extra executors beside the session's.

A task calls :func:`wait_at` with the port of a :class:`Listener`: it connects, says its pid
and waits for one byte, so a test knows when tasks are running and decides when they end,
without sleeping. This module is pickled by value, so a Ray worker receives ``wait_at`` the way
a client's code travels.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle

from tests.integration.submissions import TIMEOUT

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: what wait_at returns
WAIT_OUTPUTS = ("pid", "thread", "start", "end")


class Listener:
    """A loopback socket tasks connect to: each sends a line (its pid, say) and then waits
    for one byte from the test."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(TIMEOUT)
        self.port: int = self._server.getsockname()[1]
        self.waiting: list[tuple[socket.socket, str]] = []

    def accept(self, count: int) -> list[str]:
        """Block until ``count`` more tasks are waiting; return what each sent."""
        for _ in range(count):
            conn, _ = self._server.accept()
            conn.settimeout(TIMEOUT)
            self.waiting.append((conn, conn.makefile().readline().strip()))
        return [said for _, said in self.waiting[-count:]]

    def release_all(self) -> None:
        for conn, _ in self.waiting:
            # OSError: that task is gone (cancelled, killed), nobody is left to let through.
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"1")
        self.waiting.clear()

    def close(self) -> None:
        self.release_all()
        self._server.close()


def wait_at(port: int) -> dict[str, Any]:
    """Task body: report pid and thread to the test, wait for its go, time both ends."""
    import os
    import socket
    import threading
    import time

    start = time.time()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"{os.getpid()}\n".encode())
        conn.recv(1)
    return {"pid": os.getpid(), "thread": threading.get_ident(), "start": start, "end": time.time()}


@contextlib.contextmanager
def extra_executor(**options: Any) -> Iterator[Any]:
    """Another RayExecutor on the session's Ray connection (its own task hosts), with
    ``options``; shut down on exit."""
    from lattice.executor.ray.executor import RayExecutor

    executor = RayExecutor(**options)
    executor.initialize()
    try:
        yield executor
    finally:
        executor.shutdown()
