"""Property: folding a run's events in order always gives the state the live run had.

Random DAGs run through the scheduler core with random outcomes (finish, fail, lost once),
reports in random order, with and without chains, sometimes cancelled halfway. After every
step the core's own state of the run must equal a fresh fold of the events it emitted so far,
and the finished run must obey the DAG's rules.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lattice.core.run.events import (
    RunFinished,
    RunStatus,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
    event_from_record,
)
from lattice.core.run.log import RunLog
from lattice.core.run.state import RunState, TaskStatus
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome
from tests.unit.scheduler_driver import Driver, task

OUTCOMES = ("ok", "ok", "ok", "fail", "lose")
TERMINAL = (TaskFinished, TaskFailed, TaskSkipped, TaskCancelled)


@st.composite
def runs(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 8))
    upstream = {
        j: sorted(draw(st.sets(st.integers(0, j - 1), max_size=3)) if j else set())
        for j in range(n)
    }
    return {
        "n": n,
        "upstream": upstream,
        "outcomes": [draw(st.sampled_from(OUTCOMES)) for _ in range(n)],
        "cpu": [draw(st.sampled_from((0.5, 1.0))) for _ in range(n)],
        "cpus": draw(st.sampled_from((1.0, 2.0, 3.0))),
        "pipelines": draw(st.booleans()),
        "cancel_at": draw(st.one_of(st.none(), st.integers(0, 12))),
        "picks": draw(st.lists(st.integers(0, 50), min_size=60, max_size=60)),
    }


@settings(max_examples=150, deadline=None)
@given(runs())
def test_the_fold_of_the_emitted_events_is_the_live_state(spec: dict) -> None:
    d = Driver(cpus=spec["cpus"], pipelines=spec["pipelines"])
    ids = [f"t{i}" for i in range(spec["n"])]
    tasks = [
        task(tid, cpu=spec["cpu"][i], reads=[ids[u] for u in spec["upstream"][i]])
        for i, tid in enumerate(ids)
    ]
    after = {ids[i]: {ids[u] for u in ups} for i, ups in spec["upstream"].items() if ups}
    names = [(t.task_id, t.task_name) for t in tasks]
    lost_once: set[str] = set()

    d.run("r1", tasks, after)
    for step, pick in enumerate(spec["picks"]):
        live = d.core.run_state("r1")
        if live is not None:
            assert live == d.replay("r1", tasks), f"step {step}: the core's state is not its fold"
        if step == spec["cancel_at"]:
            d.cancel("r1")
        if not d.running:
            break
        keys = list(d.running)
        key = keys[pick % len(keys)]
        tid = d.running[key].task_name.removeprefix("name-")
        outcome = spec["outcomes"][ids.index(tid)]
        if outcome == "fail":
            d.done(key, TaskOutcome(error=TaskErrorInfo("ValueError", tid, "")))
        elif outcome == "lose" and tid not in lost_once:
            lost_once.add(tid)
            d.done(key, TaskOutcome(error=TaskErrorInfo("WorkerLostError", tid, ""), lost=True))
        else:
            d.done(key, TaskOutcome(value={"out": tid}), {"out": tid})
    assert not d.running, "the run needs more steps than drawn"

    events = [e for e in d.events if e.run_id == "r1"]
    end = d.finished()
    assert events[-1] is end, "finish_workflow is the last event"
    state = d.replay("r1", tasks)
    assert state.finished == end and state.all_terminal
    assert dict(end.tasks) == dict(state.counts())

    # What the run's log on the event loop makes of the same events, and of their records.
    log = RunLog("r1", "wf", names)
    for event in events:
        log.append(event)
    assert log.state == state
    records = [event_from_record(e.to_record()) for e in events]
    assert records == events
    assert RunState.replay("r1", "wf", names, records) == state

    for tid in ids:
        terminal = [e for e in events if isinstance(e, TERMINAL) and e.task_id == tid]
        assert len(terminal) == 1, f"{tid} ended {len(terminal)} times"
        starts = [e for e in events if isinstance(e, TaskStarted) and e.task_id == tid]
        assert [s.attempt for s in starts] == list(range(1, len(starts) + 1))
    status = {tid: state.task(tid).status for tid in ids}
    for i, tid in enumerate(ids):
        ups = [ids[u] for u in spec["upstream"][i]]
        if status[tid] in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            assert all(status[u] is TaskStatus.COMPLETED for u in ups), f"{tid} ran too early"
        if status[tid] is TaskStatus.SKIPPED:
            assert any(status[u] in (TaskStatus.FAILED, TaskStatus.SKIPPED) for u in ups)
    cancelled = spec["cancel_at"] is not None and any(isinstance(e, TaskCancelled) for e in events)
    if TaskStatus.FAILED in status.values():
        assert end.status is RunStatus.FAILED
    elif not cancelled:
        assert end.status is RunStatus.COMPLETED
        assert all(s is TaskStatus.COMPLETED for s in status.values())
    assert not [e for e in events[:-1] if isinstance(e, RunFinished)]
