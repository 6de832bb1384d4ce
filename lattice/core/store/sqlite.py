"""The embedded store: SQLite in WAL mode, written by one thread in grouped commits.

The logs of live and recently finished runs stay in memory, as in the in-memory store (which
this one extends); everything is also written to the database, and read back when the store
opens: workflow definitions, each run's accepted record and every event with its sequence
number. A run's accepted record is committed before :meth:`SQLiteEventStore.create` returns,
so before the run's first task is dispatched; events are queued to the writer and committed
in groups (see :mod:`lattice.core.store.writer`). Retention deletes from the database what it
drops from memory.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lattice.core.run.events import RunEvent, RunFinished, event_from_record
from lattice.core.run.log import InMemoryEventStore, LoggedEvent, RunLog
from lattice.core.store.records import DefinitionRecord, StoredRun
from lattice.core.store.schema import migrate
from lattice.core.store.writer import BatchWriter, call_all
from lattice.exceptions import StoreError


class SQLiteEventStore(InMemoryEventStore):
    def __init__(
        self, path: str | Path, max_finished: int = 1000, max_age: float | None = None
    ) -> None:
        """Open (or create) the database at ``path`` and read it back. Raises StoreError if it
        cannot be opened, is not a Lattice store, or has a newer schema."""
        super().__init__(max_finished, max_age)
        self.path = Path(path)
        self._unfinished: list[StoredRun] = []
        self._digests: set[str] = set()
        self._workflow_order = 0
        self._finish_order = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL with FULL: each commit survives power loss; the writer groups commits, so
            # that is one fsync per burst of events.
            conn.execute("PRAGMA synchronous=FULL")
            migrate(conn, str(self.path))
            self._read_back(conn)
        except (sqlite3.Error, OSError, ValueError, KeyError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        conn.isolation_level = "DEFERRED"
        self._writer = BatchWriter(conn)
        self._sweep()  # what retention dropped while no head ran

    # --- reading back -----------------------------------------------------------------------

    def _read_back(self, conn: sqlite3.Connection) -> None:
        code = dict(conn.execute("SELECT digest, code FROM code_blobs"))
        self._digests = set(code)
        rows = conn.execute(
            "SELECT workflow_id, definition, created_order FROM workflows ORDER BY created_order"
        )
        for workflow_id, body, order in rows:
            self._workflows[workflow_id] = _definition(workflow_id, body, code)
            self._workflow_order = max(self._workflow_order, order)
        events: dict[str, list[RunEvent]] = {}
        for run_id, record in conn.execute(
            "SELECT run_id, record FROM events ORDER BY run_id, seq"
        ):
            events.setdefault(run_id, []).append(event_from_record(json.loads(record)))
        rows = conn.execute(
            "SELECT run_id, workflow_id, definition, status, finished_order, finished_at "
            "FROM runs ORDER BY finished_order IS NOT NULL, finished_order, accepted_at"
        )
        now = self._clock()
        for run_id, workflow_id, body, status, order, finished_at in rows:
            definition = _definition(workflow_id, body, code)
            stored = StoredRun(run_id, workflow_id, definition, tuple(events.get(run_id, ())))
            log = self._new_log(run_id, workflow_id, definition)
            log.load(stored.events)
            self._logs[run_id] = log
            if status is not None:
                self._finished[run_id] = now if finished_at is None else finished_at
                self._finish_order = max(self._finish_order, order)
            else:
                self._unfinished.append(stored)

    def unfinished_runs(self) -> list[StoredRun]:
        return list(self._unfinished)

    # --- writing ----------------------------------------------------------------------------

    def _new_log(self, run_id: str, workflow_id: str, definition: DefinitionRecord) -> RunLog:
        tasks = [(str(t["task_id"]), str(t["task_name"])) for t in definition.body["tasks"]]
        return RunLog(run_id, workflow_id, tasks, sink=lambda e: self._append(run_id, e))

    def _blobs(self, record: DefinitionRecord) -> list[tuple[str, bytes]]:
        new = [(d, c) for d, c in record.code.items() if d not in self._digests]
        self._digests.update(d for d, _ in new)
        return new

    def create(
        self,
        run_id: str,
        workflow_id: str,
        tasks: Iterable[tuple[str, str]],
        definition: DefinitionRecord | None = None,
    ) -> RunLog:
        if definition is None:
            raise ValueError("a persistent store needs the run's definition")
        blobs, body = self._blobs(definition), json.dumps(definition.body)
        accepted_at = time.time()

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR IGNORE INTO code_blobs VALUES (?, ?)", blobs)
            conn.execute(
                "INSERT INTO runs (run_id, workflow_id, definition, accepted_at) "
                "VALUES (?, ?, ?, ?)",
                (run_id, workflow_id, body, accepted_at),
            )

        self._writer.submit(write)
        self._writer.flush()
        log = self._logs[run_id] = RunLog(
            run_id, workflow_id, tasks, sink=lambda e: self._append(run_id, e)
        )
        return log

    def _append(self, run_id: str, logged: LoggedEvent) -> None:
        event = logged.event
        row = (run_id, logged.seq, event.kind, json.dumps(event.to_record()))
        finish: tuple[str, int, float, str] | None = None
        if isinstance(event, RunFinished):
            self._finish_order += 1
            finish = (event.status.value, self._finish_order, self._clock(), run_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?)", row)
            if finish is not None:
                conn.execute(
                    "UPDATE runs SET status = ?, finished_order = ?, finished_at = ? "
                    "WHERE run_id = ?",
                    finish,
                )

        log = self._logs.get(run_id)
        count = logged.seq + 1
        self._writer.submit(write, None if log is None else lambda: log.mark_durable(count))

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        # Logs live on the loop: what is durable is told to them there, once per commit.
        def deliver(callbacks: list[Callable[[], None]]) -> None:
            try:
                loop.call_soon_threadsafe(call_all, callbacks)
            except RuntimeError:
                return  # the loop is closed: the app is gone, and every follower with it

        self._writer.deliver_with(deliver)

    def save_workflow(self, record: DefinitionRecord) -> None:
        known = record.workflow_id in self._workflows
        super().save_workflow(record)
        if not known:
            self._workflow_order += 1
        blobs, body, order = self._blobs(record), json.dumps(record.body), self._workflow_order

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR IGNORE INTO code_blobs VALUES (?, ?)", blobs)
            if known:
                conn.execute(
                    "UPDATE workflows SET definition = ? WHERE workflow_id = ?",
                    (body, record.workflow_id),
                )
            else:
                conn.execute(
                    "INSERT INTO workflows VALUES (?, ?, ?)", (record.workflow_id, body, order)
                )

        # An edit the client was told about must survive a crash.
        self._writer.submit(write)
        self._writer.flush()

    def delete_workflow(self, workflow_id: str) -> None:
        super().delete_workflow(workflow_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM workflows WHERE workflow_id = ?", (workflow_id,))

        # Answered as done: it must not come back after a crash.
        self._writer.submit(write)
        self._writer.flush()

    def _drop(self, run_id: str) -> None:
        super()._drop(run_id)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

        self._writer.submit(write)

    @property
    def durable(self) -> bool:
        return True

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _definition(workflow_id: str, body: str, code: dict[str, bytes]) -> DefinitionRecord:
    parsed: dict[str, Any] = json.loads(body)
    digests = {t["code"] for t in parsed["tasks"] if t.get("code")}
    return DefinitionRecord(workflow_id, parsed, {d: code[d] for d in digests if d in code})
