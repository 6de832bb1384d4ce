"""One thread that writes to a SQLite database, many writes per commit (group commit).

Whoever appends a run event must not wait for a disk: :meth:`BatchWriter.submit` queues the
write and returns. The thread takes everything queued since its last commit and applies it in
one transaction, so a burst of task events costs one fsync, not one each. Whoever must know a
write is durable (a run's accepted record, before its first task goes out) calls
:meth:`BatchWriter.flush`, which returns once everything submitted before it is committed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from lattice.exceptions import StoreError

log = logging.getLogger(__name__)

Write = Callable[[sqlite3.Connection], None]
Done = Callable[[], None]


def call_all(callbacks: list[Done]) -> None:
    for callback in callbacks:
        callback()


class BatchWriter:
    def __init__(self, conn: sqlite3.Connection, name: str = "lattice-store-writer") -> None:
        """``conn`` becomes the writer's: nobody else may use it while the writer runs (it was
        opened with ``check_same_thread=False``)."""
        self._conn = conn
        self._cond = threading.Condition()
        self._queue: list[tuple[Write, Done | None]] = []
        #: hands a commit's callbacks to whoever must run them (see deliver_with)
        self._deliver: Callable[[list[Done]], None] = call_all
        self._submitted = 0
        self._committed = 0
        self._closing = False
        self._error: BaseException | None = None
        #: transactions committed so far (a test reads it to see commits grouped)
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def deliver_with(self, deliver: Callable[[list[Done]], None]) -> None:
        """After each commit, pass its writes' ``on_commit`` callbacks to ``deliver`` (from the
        writer's thread; by default they are called there)."""
        self._deliver = deliver

    def submit(self, write: Write, on_commit: Done | None = None) -> None:
        """Queue ``write``; ``on_commit`` is called (see deliver_with) once it is committed.
        Raises StoreError if an earlier commit failed: nothing is taken that could not be
        kept."""
        with self._cond:
            self._check()
            if self._closing:
                raise StoreError("the store is closed")
            self._queue.append((write, on_commit))
            self._submitted += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None = 30.0) -> None:
        """Return once every write submitted so far is committed. Raises StoreError if a
        commit failed or the writer did not get there within ``timeout`` seconds."""
        with self._cond:
            target = self._submitted
            done = self._cond.wait_for(
                lambda: self._committed >= target or self._error is not None, timeout
            )
            self._check()
            if not done:
                raise StoreError(f"the store did not commit within {timeout}s")

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, stop the thread and close the connection."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the store writer did not stop within %ss", timeout)
            return
        self._conn.close()

    @property
    def pending(self) -> int:
        """Writes submitted and not yet committed."""
        with self._cond:
            return self._submitted - self._committed

    def _check(self) -> None:
        if self._error is not None:
            raise StoreError(f"writing the store failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                batch, self._queue = self._queue, []
                if not batch and self._closing:
                    return
            try:
                with self._conn:  # one transaction: committed, or rolled back on error
                    for write, _ in batch:
                        write(self._conn)
            except (sqlite3.Error, ValueError, TypeError) as exc:
                # Loud and sticky: every later submit and flush raises, so the head stops
                # accepting work it cannot keep instead of losing it quietly.
                log.exception("the store writer failed; %d writes were not kept", len(batch))
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            callbacks = [done for _, done in batch if done is not None]
            if callbacks:
                self._deliver(callbacks)
            with self._cond:
                self._committed += len(batch)
                self.commits += 1
                self._cond.notify_all()
