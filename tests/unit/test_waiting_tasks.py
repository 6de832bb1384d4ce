"""WaitingTasks: a task is released when its last upstream task finishes; failures and
cancelled runs drop what waits on them; a run's tasks reach the scheduler in one message."""

from __future__ import annotations

import pytest

from lattice.core.observer import EngineObserver
from lattice.core.orchestrator.context import RunContext
from lattice.core.run.log import InMemoryEventStore
from lattice.core.runtime.task import BaseTaskRuntime
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import MessageType, RunTasksData
from lattice.core.scheduler.waiting import WaitingTasks
from lattice.core.workflow.base import CodeTask, Workflow
from tests.unit.runtimes import rt


def ids(tasks: list[BaseTaskRuntime]) -> list[str]:
    return [t.task_id for t in tasks]


def test_a_task_is_released_by_its_last_upstream_task_only() -> None:
    w = WaitingTasks()
    w.add(rt("join"), {"a", "b"})
    w.add(rt("after-a"), {"a"})

    assert ids(w.finished("r1", "a")) == ["after-a"]
    assert len(w) == 1
    assert ids(w.finished("r1", "b")) == ["join"]
    assert len(w) == 0
    assert w.finished("r1", "b") == []


def test_fan_out_releases_every_dependant_in_the_order_added() -> None:
    w = WaitingTasks()
    for i in range(5):
        w.add(rt(f"m{i}"), {"root"})

    assert ids(w.finished("r1", "root")) == [f"m{i}" for i in range(5)]


def test_runs_do_not_see_each_others_tasks() -> None:
    w = WaitingTasks()
    w.add(rt("b", run_id="r1"), {"a"})
    w.add(rt("b", run_id="r2"), {"a"})

    assert [t.run_id for t in w.finished("r2", "a")] == ["r2"]
    assert len(w) == 1


def test_a_failed_task_drops_its_descendants_but_not_other_tasks() -> None:
    w = WaitingTasks()
    w.add(rt("b"), {"a"})
    w.add(rt("c"), {"b"})
    w.add(rt("d"), {"c", "x"})
    w.add(rt("y"), {"x"})

    w.drop_after("r1", "a")

    assert len(w) == 1
    assert ids(w.finished("r1", "x")) == ["y"]


def test_a_dependant_with_a_failed_upstream_is_not_released_by_the_other() -> None:
    w = WaitingTasks()
    w.add(rt("join"), {"ok", "bad"})

    w.drop_after("r1", "bad")

    assert w.finished("r1", "ok") == []
    assert len(w) == 0


def test_dropping_a_run_forgets_all_of_it() -> None:
    w = WaitingTasks()
    w.add(rt("b"), {"a"})
    w.add(rt("c"), {"b"})
    w.add(rt("b", run_id="r2"), {"a"})

    w.drop_run("r1")

    assert len(w) == 1
    assert w.finished("r1", "a") == []
    assert ids(w.finished("r2", "a")) == ["b"]


def test_a_follower_is_a_task_that_waits_for_that_one_task_alone() -> None:
    w = WaitingTasks()
    w.add(rt("join"), {"a", "b"})
    w.add(rt("refused"), {"a"})
    w.add(rt("next"), {"a"})
    w.add(rt("after-next"), {"next"})

    follower = w.take_follower("r1", "a", lambda t: t.task_id != "refused")

    assert follower is not None and follower.task_id == "next"
    assert w.take_follower("r1", "b", lambda t: True) is None  # join also waits for a
    assert ids(w.finished("r1", "a")) == ["refused"]
    # What waits for the follower still waits for it.
    assert ids(w.finished("r1", "next")) == ["after-next"]


def test_a_follower_taken_back_waits_again() -> None:
    w = WaitingTasks()
    w.add(rt("next"), {"a"})
    follower = w.take_follower("r1", "a", lambda t: True)
    assert follower is not None and len(w) == 0

    w.add(follower, {"a"})

    assert ids(w.finished("r1", "a")) == ["next"]


def test_waiting_for_nothing_or_twice_is_refused() -> None:
    w = WaitingTasks()
    with pytest.raises(ValueError, match="waits for nothing"):
        w.add(rt("a"), set())
    w.add(rt("b"), {"a"})
    with pytest.raises(ValueError, match="already waiting"):
        w.add(rt("b"), {"c"})
    assert len(w) == 1


def test_a_run_hands_all_its_tasks_to_the_scheduler_in_one_message() -> None:
    """A start task may finish before the scheduler reads another message: its dependants
    must already be known then, or they would wait for it forever."""
    workflow = Workflow("wf")
    for task_id in ("root", "left", "right", "join"):
        task = CodeTask("wf", task_id, task_id)
        task.code = b"code"
        workflow.add_task(task_id, task)
    for source, target in (
        ("root", "left"),
        ("root", "right"),
        ("left", "join"),
        ("right", "join"),
    ):
        workflow.add_edge(source, target)
    bus = MessageBus()
    run_log = InMemoryEventStore().create(
        "run", "wf", [(t, t) for t in ("root", "left", "right", "join")]
    )
    ctx = RunContext("run", workflow, bus, run_log, EngineObserver(), lambda _ctx: None)

    ctx.submit_start_tasks()

    messages = bus.drain_in_scheduler()
    assert [m.message_type for m in messages] == [MessageType.RUN_TASKS]
    data = messages[0].data
    assert isinstance(data, RunTasksData)
    assert {e.task.task_id: e.after for e in data.tasks} == {
        "root": frozenset(),
        "left": {"root"},
        "right": {"root"},
        "join": {"left", "right"},
    }
