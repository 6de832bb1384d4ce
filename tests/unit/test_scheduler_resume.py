"""The scheduler core resuming a run from its recorded events (a head restarted on its store)."""

from __future__ import annotations

from lattice.core.run.events import (
    RunStatus,
    TaskFailed,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
)
from lattice.core.run.state import RunState
from lattice.core.runtime.task import CodeTaskRuntime
from lattice.exceptions import TaskErrorInfo
from lattice.serialization import WireValue, encode_value
from lattice.vocabulary import TaskAttempt
from tests.unit.scheduler_driver import Driver, task


def chain() -> tuple[list[CodeTaskRuntime], dict[str, set[str]]]:
    """a -> b -> c"""
    return [task("a"), task("b", reads=["a"]), task("c", reads=["b"])], {
        "b": {"a"},
        "c": {"b"},
    }


def started(task_id: str, attempt: int = 1) -> TaskStarted:
    return TaskStarted("r1", "wf", task_id, f"name-{task_id}", "n", "127.0.0.1", (), attempt)


def finished(task_id: str, value: object) -> TaskFinished:
    return TaskFinished("r1", "wf", task_id, f"name-{task_id}", encode_value({"out": value}))


def test_a_recorded_finish_never_runs_again_and_feeds_its_dependant_its_stored_output() -> None:
    d = Driver()
    tasks, _ = chain()
    history = (started("a"), finished("a", [1, 2]), started("b"))
    # What the run context hands over on resume: b waits for nothing unfinished.
    d.run("r1", tasks, {"c": {"b"}}, history)
    assert sorted(s.task_name for s in d.running.values()) == ["name-b"]
    sub = d.running[d.key_of("b")]
    value = sub.upstream_inputs["in_a"]
    assert isinstance(value, WireValue) and value.decode() == [1, 2]
    # b was recorded started once: this is its second attempt, and its code is told so.
    assert d.of("r1", TaskStarted)[0].attempt == 2
    assert sub.attempt == TaskAttempt("r1", "b", 2)
    assert sub.attempt.idempotency_key == "r1/b"
    d.finish("b")
    d.finish("c")
    assert d.finished().status is RunStatus.COMPLETED
    assert d.kinds() == [
        ("start_task", "b"),
        ("finish_task", "b"),
        ("start_task", "c"),
        ("finish_task", "c"),
        ("finish_workflow", "completed"),
    ]
    # The core's fold, from the history and what it emitted, has each task finished once.
    names = [(t.task_id, t.task_name) for t in tasks]
    state = RunState.replay("r1", "wf", names, [*history, *d.events])
    assert {t.status.value for t in state.tasks.values()} == {"completed"}


def test_a_run_whose_every_task_was_recorded_finished_only_finishes() -> None:
    d = Driver()
    tasks, _ = chain()
    history = tuple(e for t in "abc" for e in (started(t), finished(t, t)))
    d.run("r1", tasks, {}, history)
    assert d.running == {}
    assert d.kinds() == [("finish_workflow", "completed")]


def test_dependants_of_a_recorded_failure_not_yet_recorded_skipped_are_skipped() -> None:
    d = Driver()
    tasks, _ = chain()
    error = TaskErrorInfo("ValueError", "boom", "tb")
    history = (started("a"), TaskFailed("r1", "wf", "a", "name-a", error))
    d.run("r1", tasks, {"b": {"a"}, "c": {"b"}}, history)
    assert d.running == {}
    skipped = d.of("r1", TaskSkipped)
    assert [s.task_id for s in skipped] == ["b", "c"]
    assert "name-a" in skipped[0].reason
    assert d.finished().status is RunStatus.FAILED


def test_a_recorded_output_that_lacks_the_key_a_dependant_reads_fails_that_dependant() -> None:
    d = Driver()
    tasks, _ = chain()
    wrong = TaskFinished("r1", "wf", "a", "name-a", encode_value({"other": 1}))
    d.run("r1", tasks, {"c": {"b"}}, (started("a"), wrong))
    failed = d.of("r1", TaskFailed)
    assert [f.task_id for f in failed] == ["b"]
    assert "has no output 'out'" in failed[0].error.message
