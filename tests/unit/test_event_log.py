"""A run is its event log: append, replay from a sequence, follow live, fold a summary."""

from __future__ import annotations

import asyncio

import pytest

from lattice.core.run.events import (
    RunFinished,
    RunStatus,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
)
from lattice.core.run.log import InMemoryEventStore, LoggedEvent, RunLog
from lattice.core.run.state import InvalidTransition
from lattice.exceptions import RunNotFoundError, TaskErrorInfo


def tasks(*ids: str) -> list[tuple[str, str]]:
    return [(tid, f"name-{tid}") for tid in ids]


def finish(log: RunLog, status: RunStatus = RunStatus.COMPLETED) -> None:
    log.append(RunFinished(log.run_id, log.workflow_id, status, log.state.counts()))


def start(log: RunLog, task_id: str, node_id: str = "n1") -> LoggedEvent:
    return log.append(TaskStarted(log.run_id, log.workflow_id, task_id, f"name-{task_id}", node_id))


def done(log: RunLog, task_id: str, result: object) -> LoggedEvent:
    return log.append(TaskFinished(log.run_id, log.workflow_id, task_id, f"name-{task_id}", result))


def test_append_numbers_events_from_zero() -> None:
    log = RunLog("r", "wf", tasks("a"))

    first = start(log, "a")
    second = done(log, "a", {"y": 1})

    assert (first.seq, second.seq, len(log)) == (0, 1, 2)
    assert second.to_message() == {
        "type": "finish_task",
        "data": {"workflow_id": "wf", "task_id": "a", "task_name": "name-a", "result": {"y": 1}},
        "seq": 1,
    }


def test_events_replay_from_a_sequence() -> None:
    log = RunLog("r", "wf", tasks(*(f"t{i}" for i in range(5))))
    for i in range(5):
        start(log, f"t{i}")

    assert [e.seq for e in log.events()] == [0, 1, 2, 3, 4]
    assert [e.seq for e in log.events(3)] == [3, 4]
    assert [e.seq for e in log.events(-2)] == [0, 1, 2, 3, 4]
    assert log.events(9) == []


def test_finish_workflow_closes_the_log_and_sets_the_status() -> None:
    log = RunLog("r", "wf", tasks("late"))
    assert (log.closed, log.status) == (False, RunStatus.RUNNING)

    finish(log, RunStatus.FAILED)

    assert (log.closed, log.status) == (True, RunStatus.FAILED)
    with pytest.raises(InvalidTransition, match="run r has finished; start_task comes too late"):
        start(log, "late")
    assert len(log) == 1


def test_followers_replay_the_past_then_receive_new_events_until_the_run_ends() -> None:
    async def main() -> tuple[list[int], list[int]]:
        log = RunLog("r", "wf", tasks("a", "b"))
        start(log, "a")
        got_first = asyncio.Event()

        async def follow(from_seq: int) -> list[int]:
            seen = []
            async for event in log.follow(from_seq):
                seen.append(event.seq)
                got_first.set()
            return seen

        from_start = asyncio.create_task(follow(0))
        late = asyncio.create_task(follow(1))
        await got_first.wait()  # a follower replayed the past and now waits for more
        done(log, "a", {})
        start(log, "b")
        finish(log)
        return await asyncio.wait_for(from_start, 5), await asyncio.wait_for(late, 5)

    from_start, late = asyncio.run(main())

    assert from_start == [0, 1, 2, 3]
    assert late == [1, 2, 3]


def test_following_a_finished_log_replays_it_and_ends() -> None:
    async def main() -> list[LoggedEvent]:
        log = RunLog("r", "wf", tasks("a"))
        start(log, "a")
        finish(log)
        return [e async for e in log.follow(1)]

    assert [e.kind for e in asyncio.run(main())] == ["finish_workflow"]


def test_wait_closed_returns_once_the_run_finishes() -> None:
    async def main() -> bool:
        log = RunLog("r", "wf", ())
        waiter = asyncio.create_task(log.wait_closed())
        await asyncio.sleep(0)  # let the waiter start waiting (a yield, not a timed wait)
        assert not waiter.done()
        finish(log)
        await asyncio.wait_for(waiter, 5)
        return log.closed

    assert asyncio.run(main())


def test_summary_folds_each_task_status_result_and_error() -> None:
    log = RunLog("r", "wf", tasks("ok", "bad", "dep", "gone", "never", "busy"))
    start(log, "ok")
    done(log, "ok", {"y": 2})
    start(log, "bad")
    error = {"type": "ValueError", "message": "boom", "traceback": "..."}
    log.append(TaskFailed("r", "wf", "bad", "name-bad", TaskErrorInfo.from_dict(error)))
    log.append(TaskSkipped("r", "wf", "dep", "upstream task bad failed"))
    log.append(TaskCancelled("r", "wf", "gone"))
    start(log, "busy", "n2")

    running = log.summary()
    finish(log, RunStatus.FAILED)
    summary = log.summary()

    assert running["status"] == "running"
    assert summary["status"] == "failed"
    assert (summary["run_id"], summary["workflow_id"], summary["events"]) == ("r", "wf", 8)
    assert summary["tasks"] == {
        "ok": {"status": "completed", "node_id": "n1", "result": {"y": 2}},
        "bad": {"status": "failed", "node_id": "n1", "error": error},
        "dep": {"status": "skipped", "reason": "upstream task bad failed"},
        "gone": {"status": "cancelled"},
        "never": {"status": "pending"},
        "busy": {"status": "running", "node_id": "n2"},
    }


# --- the store --------------------------------------------------------------------------------


def test_store_creates_and_finds_logs() -> None:
    store = InMemoryEventStore()
    log = store.create("r1", "wf", tasks("t"))

    assert store.get("r1") is log
    assert store.run_ids() == ["r1"]
    with pytest.raises(RunNotFoundError, match="Run nope not found"):
        store.get("nope")


def test_store_keeps_only_the_most_recently_finished_runs() -> None:
    store = InMemoryEventStore(max_finished=2)
    running = store.create("running", "wf", ())
    for run_id in ("f1", "f2", "f3"):
        store.create(run_id, "wf", ())
        finish(store.get(run_id))
        store.finished(run_id)

    assert sorted(store.run_ids()) == ["f2", "f3", "running"]
    with pytest.raises(RunNotFoundError):
        store.get("f1")
    assert store.get("running") is running


def test_retire_forgets_a_finished_run_and_refuses_a_running_one() -> None:
    store = InMemoryEventStore()
    store.create("running", "wf", ())
    store.create("done", "wf", ())
    finish(store.get("done"))
    store.finished("done")

    with pytest.raises(RuntimeError, match="run running is still running"):
        store.retire("running")
    store.retire("done")

    assert store.run_ids() == ["running"]
    with pytest.raises(RunNotFoundError):
        store.retire("done")


def test_retired_runs_do_not_count_against_retention() -> None:
    store = InMemoryEventStore(max_finished=1)
    store.create("a", "wf", ())
    finish(store.get("a"))
    store.finished("a")
    store.retire("a")
    store.create("b", "wf", ())
    finish(store.get("b"))
    store.finished("b")

    assert store.run_ids() == ["b"]
