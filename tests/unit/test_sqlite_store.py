"""The SQLite store on real files: what is kept, what a reopened store reads back, retention,
grouped commits and the schema's version."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from lattice import ReconnectPolicy, current_attempt
from lattice.core.run.events import RunFinished, RunStatus, TaskFinished, TaskStarted
from lattice.core.run.log import InMemoryEventStore
from lattice.core.store.factory import default_store_spec, open_store
from lattice.core.store.records import (
    StoredDefinitionError,
    definition_record,
    rebuild_workflow,
)
from lattice.core.store.schema import MIGRATIONS, SCHEMA_VERSION
from lattice.core.store.sqlite import SQLiteEventStore
from lattice.core.workflow.base import CodeTask, CodeTaskConfig, Workflow
from lattice.exceptions import LatticeInputError, LatticeUsageError, RunNotFoundError, StoreError
from lattice.serialization import dumps_b64
from lattice.vocabulary import SandboxSpec


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": params["x"] * 2}


def _outputs(*keys: str) -> dict[str, Any]:
    return {"output_params": {str(i): {"key": k} for i, k in enumerate(keys)}}


def _inputs(**values: tuple[str, Any]) -> dict[str, Any]:
    return {
        "input_params": {
            str(i): {"key": k, "input_schema": schema, "value": v}
            for i, (k, (schema, v)) in enumerate(values.items())
        }
    }


def two_task_workflow(workflow_id: str = "wf") -> Workflow:
    """a(x=3) -> b(x=a.y)"""
    wf = Workflow(workflow_id)
    for tid in ("a", "b"):
        wf.add_task(tid, CodeTask(workflow_id, tid, f"name-{tid}"))
    code = dumps_b64(double)
    wf.save_task(
        "a",
        CodeTaskConfig(
            serialized_code=code,
            task_input=_inputs(x=("from_user", 3)),
            task_output=_outputs("y"),
            resources={"cpu": 0.5},
            sandbox=SandboxSpec(cpu_time_limit=2.0),
        ),
        add_edges=True,
    )
    wf.save_task(
        "b",
        CodeTaskConfig(
            serialized_code=code,
            task_input=_inputs(x=("from_task", "a.y")),
            task_output=_outputs("y"),
            priority=1,
        ),
        add_edges=True,
    )
    return wf


def tasks_of(wf: Workflow) -> list[tuple[str, str]]:
    return [(t.task_id, t.task_name) for t in wf.tasks()]


def test_a_rebuilt_definition_is_the_workflow_it_was_made_from() -> None:
    wf = two_task_workflow()
    again = rebuild_workflow(definition_record(wf))
    assert again.get_graph_edges() == wf.get_graph_edges()
    for task in wf.tasks():
        other = again.get_task(task.task_id)
        assert isinstance(task, CodeTask) and isinstance(other, CodeTask)
        assert (other.code, other.inputs, other.outputs) == (task.code, task.inputs, task.outputs)
        assert (other.requirements, other.priority, other.sandbox) == (
            task.requirements,
            task.priority,
            task.sandbox,
        )


def test_a_definition_whose_code_is_missing_fails_to_rebuild_naming_the_task() -> None:
    record = definition_record(two_task_workflow())
    damaged = type(record)(record.workflow_id, record.body, {})
    with pytest.raises(StoredDefinitionError, match="task a of workflow wf"):
        rebuild_workflow(damaged)


def test_a_reopened_store_knows_every_workflow_and_run_with_their_events(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    store = SQLiteEventStore(path)
    wf = two_task_workflow()
    store.save_workflow(definition_record(wf))
    store.save_workflow(definition_record(two_task_workflow("wf2")))
    log = store.create("r1", "wf", tasks_of(wf), definition_record(wf))
    log.append(TaskStarted("r1", "wf", "a", "name-a", "n1", "127.0.0.1"))
    log.append(TaskFinished("r1", "wf", "a", "name-a", {"y": 6}, node_id="n1", duration=0.1))
    log.append(TaskStarted("r1", "wf", "b", "name-b", "n1", "127.0.0.1"))
    done = store.create("r2", "wf", tasks_of(wf), definition_record(wf))
    done.append(RunFinished("r2", "wf", RunStatus.CANCELLED, (("pending", 2),), "asked to"))
    store.finished("r2")
    store.close()

    again = SQLiteEventStore(path)
    try:
        assert [r.workflow_id for r in again.workflows()] == ["wf", "wf2"]
        assert sorted(again.run_ids()) == ["r1", "r2"]
        reread = again.get("r1")
        assert [e.to_message() for e in reread.events()] == [e.to_message() for e in log.events()]
        assert reread.state == log.state
        assert [r.run_id for r in again.unfinished_runs()] == ["r1"]
        assert again.get("r2").closed
        # Code is kept once, whichever workflows and runs use it.
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT COUNT(*) FROM code_blobs").fetchone() == (1,)
        conn.close()
        # The log goes on at the next sequence number, and that is kept too.
        reread.append(TaskFinished("r1", "wf", "b", "name-b", {"y": 12}))
    finally:
        again.close()
    third = SQLiteEventStore(path)
    assert [e.seq for e in third.get("r1").events()] == [0, 1, 2, 3]
    third.close()


def test_a_runs_accepted_record_is_committed_when_create_returns(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    store = SQLiteEventStore(path)
    wf = two_task_workflow()
    store.create("r1", "wf", tasks_of(wf), definition_record(wf))
    # Another connection (another process, after a crash) sees it without any flush.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT run_id, status FROM runs").fetchall() == [("r1", None)]
    conn.close()
    store.close()


def test_events_are_committed_in_groups_not_one_commit_each(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "lattice.db")
    wf = Workflow("wf")
    names = [(f"t{i}", f"t{i}") for i in range(500)]
    for tid, name in names:
        wf.add_task(tid, CodeTask("wf", tid, name))
    log = store.create("r1", "wf", names, definition_record(wf))
    before = store._writer.commits
    for tid, name in names:
        log.append(TaskStarted("r1", "wf", tid, name, "n", "127.0.0.1"))
    store.flush()
    commits = store._writer.commits - before
    store.close()
    assert 1 <= commits < len(names) / 2, commits


def test_retention_deletes_the_oldest_finished_run_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    store = SQLiteEventStore(path, max_finished=1)
    wf = two_task_workflow()
    for run_id in ("r1", "r2"):
        log = store.create(run_id, "wf", tasks_of(wf), definition_record(wf))
        log.append(RunFinished(run_id, "wf", RunStatus.CANCELLED, (("pending", 2),)))
        store.finished(run_id)
    store.close()
    again = SQLiteEventStore(path, max_finished=1)
    assert again.run_ids() == ["r2"]
    with pytest.raises(RunNotFoundError):
        again.get("r1")
    again.close()


def test_a_store_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    SQLiteEventStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this Lattice knows"):
        SQLiteEventStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    conn.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    path.write_bytes(b"not a database, just text " * 100)
    with pytest.raises(StoreError, match=str(path)):
        SQLiteEventStore(path)


def test_store_specs(tmp_path: Path) -> None:
    assert default_store_spec(tmp_path) == f"sqlite:///{tmp_path}/lattice.db"
    store = open_store(default_store_spec(tmp_path / "data"))
    assert isinstance(store, SQLiteEventStore) and store.path == tmp_path / "data" / "lattice.db"
    store.close()
    for bad in ("sqlite://relative", "postgres://x", "sqlite:///", ""):
        with pytest.raises(LatticeUsageError, match="'memory' or 'sqlite:///PATH'"):
            open_store(bad)


def test_followers_see_an_event_only_once_it_is_committed(tmp_path: Path) -> None:
    """So a client never sees an event a crash could take back, and the sequence numbers it
    saw still hold after a restart."""
    store = SQLiteEventStore(tmp_path / "lattice.db")
    wf = two_task_workflow()
    log = store.create("r1", "wf", tasks_of(wf), definition_record(wf))
    committed = threading.Event()

    async def main() -> list[int]:
        store.bind_loop(asyncio.get_running_loop())
        # Hold the writer: until released, nothing more is committed.
        store._writer.submit(lambda conn: committed.wait(10))
        log.append(TaskStarted("r1", "wf", "a", "name-a", "n1", "127.0.0.1"))
        seen: list[int] = []

        async def follow() -> None:
            async for event in log.follow(0):
                seen.append(event.seq)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0)  # a yield: the follower runs up to its wait
        assert seen == [] and log.visible == 0 and len(log) == 1
        committed.set()
        log.append(RunFinished("r1", "wf", RunStatus.CANCELLED, (("running", 1),)))
        await asyncio.wait_for(follower, 10)
        return seen

    try:
        assert asyncio.run(main()) == [0, 1]
    finally:
        store.close()


def test_reconnect_delays_double_up_to_their_ceiling() -> None:
    policy = ReconnectPolicy(attempts=5, first_delay=0.25, max_delay=1.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(LatticeInputError):
        ReconnectPolicy(attempts=-1)


def test_current_attempt_outside_a_task_says_what_it_is_for() -> None:
    with pytest.raises(LatticeUsageError, match="running \\(unbatched\\) task"):
        current_attempt()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finish(store: InMemoryEventStore, run_id: str) -> None:
    wf = two_task_workflow()
    log = store.create(run_id, "wf", tasks_of(wf), definition_record(wf))
    log.append(RunFinished(run_id, "wf", RunStatus.CANCELLED, (("pending", 2),)))
    store.finished(run_id)


def test_finished_runs_older_than_the_age_limit_are_retired_as_runs_finish() -> None:
    clock = Clock()
    store = InMemoryEventStore(max_finished=100, max_age=10, clock=clock)
    finish(store, "r1")
    clock.now += 5
    finish(store, "r2")
    clock.now += 7  # r1 is 12 s old, r2 7 s
    finish(store, "r3")
    assert store.run_ids() == ["r2", "r3"]


def test_a_reopened_store_retires_what_grew_too_old_while_no_head_ran(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    store = SQLiteEventStore(path, max_age=3600)
    finish(store, "old")
    store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE runs SET finished_at = finished_at - 7200")
    conn.close()
    again = SQLiteEventStore(path, max_age=3600)
    assert again.run_ids() == []
    again.close()
    third = SQLiteEventStore(path)
    assert third.run_ids() == []  # deleted from the file, not only forgotten
    third.close()


def test_a_store_of_schema_version_1_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "lattice.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    body = json.dumps(definition_record(two_task_workflow()).body)
    conn.execute("INSERT INTO runs VALUES ('r1', 'wf', ?, 0.0, 'cancelled', 1)", (body,))
    conn.close()
    store = SQLiteEventStore(path, max_age=3600)
    try:
        assert store.run_ids() == ["r1"]  # its age counts from now
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)
    conn.close()
