"""A run is its event log: append, replay from a sequence, follow live, fold a summary."""

from __future__ import annotations

import asyncio

import pytest

from lattice.core.orchestrator import events as ev
from lattice.core.orchestrator.events import InMemoryEventStore, RunEvent, RunLog
from lattice.exceptions import RunNotFoundError


def finish(log: RunLog, status: str = ev.COMPLETED) -> None:
    log.append(ev.FINISH_WORKFLOW, {"run_id": log.run_id, "status": status})


def test_append_numbers_events_from_zero() -> None:
    log = RunLog("r", "wf", ["a"])

    first = log.append(ev.START_TASK, {"task_id": "a"})
    second = log.append(ev.FINISH_TASK, {"task_id": "a", "result": {"y": 1}})

    assert (first.seq, second.seq, len(log)) == (0, 1, 2)
    assert second.to_message() == {
        "type": "finish_task",
        "data": {"task_id": "a", "result": {"y": 1}},
        "seq": 1,
    }


def test_events_replay_from_a_sequence() -> None:
    log = RunLog("r", "wf", [])
    for i in range(5):
        log.append(ev.START_TASK, {"task_id": f"t{i}"})

    assert [e.seq for e in log.events()] == [0, 1, 2, 3, 4]
    assert [e.seq for e in log.events(3)] == [3, 4]
    assert [e.seq for e in log.events(-2)] == [0, 1, 2, 3, 4]
    assert log.events(9) == []


def test_finish_workflow_closes_the_log_and_sets_the_status() -> None:
    log = RunLog("r", "wf", [])
    assert (log.closed, log.status) == (False, ev.RUNNING)

    finish(log, ev.FAILED)

    assert (log.closed, log.status) == (True, ev.FAILED)
    with pytest.raises(RuntimeError, match="run r is finished; its log is closed"):
        log.append(ev.START_TASK, {"task_id": "late"})
    assert len(log) == 1


def test_followers_replay_the_past_then_receive_new_events_until_the_run_ends() -> None:
    async def main() -> tuple[list[int], list[int]]:
        log = RunLog("r", "wf", [])
        log.append(ev.START_TASK, {"task_id": "a"})
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
        log.append(ev.FINISH_TASK, {"task_id": "a"})
        log.append(ev.START_TASK, {"task_id": "b"})
        finish(log)
        return await asyncio.wait_for(from_start, 5), await asyncio.wait_for(late, 5)

    from_start, late = asyncio.run(main())

    assert from_start == [0, 1, 2, 3]
    assert late == [1, 2, 3]


def test_following_a_finished_log_replays_it_and_ends() -> None:
    async def main() -> list[RunEvent]:
        log = RunLog("r", "wf", [])
        log.append(ev.START_TASK, {"task_id": "a"})
        finish(log)
        return [e async for e in log.follow(1)]

    assert [e.type for e in asyncio.run(main())] == [ev.FINISH_WORKFLOW]


def test_wait_closed_returns_once_the_run_finishes() -> None:
    async def main() -> bool:
        log = RunLog("r", "wf", [])
        waiter = asyncio.create_task(log.wait_closed())
        await asyncio.sleep(0)  # let the waiter start waiting (a yield, not a timed wait)
        assert not waiter.done()
        finish(log)
        await asyncio.wait_for(waiter, 5)
        return log.closed

    assert asyncio.run(main())


def test_summary_folds_each_task_status_result_and_error() -> None:
    log = RunLog("r", "wf", ["ok", "bad", "dep", "gone", "never", "busy"])
    log.append(ev.START_TASK, {"task_id": "ok", "node_id": "n1"})
    log.append(ev.FINISH_TASK, {"task_id": "ok", "result": {"y": 2}})
    log.append(ev.START_TASK, {"task_id": "bad", "node_id": "n1"})
    error = {"type": "ValueError", "message": "boom", "traceback": "..."}
    log.append(ev.TASK_EXCEPTION, {"task_id": "bad", "error": error})
    log.append(ev.TASK_SKIPPED, {"task_id": "dep", "reason": "upstream task bad failed"})
    log.append(ev.TASK_CANCELLED, {"task_id": "gone"})
    log.append(ev.START_TASK, {"task_id": "busy", "node_id": "n2"})

    running = log.summary()
    finish(log, ev.FAILED)
    done = log.summary()

    assert running["status"] == ev.RUNNING
    assert done["status"] == ev.FAILED
    assert (done["run_id"], done["workflow_id"], done["events"]) == ("r", "wf", 8)
    assert done["tasks"] == {
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
    log = store.create("r1", "wf", ["t"])

    assert store.get("r1") is log
    assert store.run_ids() == ["r1"]
    with pytest.raises(RunNotFoundError, match="Run nope not found"):
        store.get("nope")


def test_store_keeps_only_the_most_recently_finished_runs() -> None:
    store = InMemoryEventStore(max_finished=2)
    running = store.create("running", "wf", [])
    for run_id in ("f1", "f2", "f3"):
        store.create(run_id, "wf", [])
        finish(store.get(run_id))
        store.finished(run_id)

    assert sorted(store.run_ids()) == ["f2", "f3", "running"]
    with pytest.raises(RunNotFoundError):
        store.get("f1")
    assert store.get("running") is running


def test_retire_forgets_a_finished_run_and_refuses_a_running_one() -> None:
    store = InMemoryEventStore()
    store.create("running", "wf", [])
    store.create("done", "wf", [])
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
    store.create("a", "wf", [])
    finish(store.get("a"))
    store.finished("a")
    store.retire("a")
    store.create("b", "wf", [])
    finish(store.get("b"))
    store.finished("b")

    assert store.run_ids() == ["b"]
