"""The scheduler core's decisions, driven by hand: no thread, no executor, no Ray."""

from __future__ import annotations

import pytest

from lattice.core.resource.node import NodeResources
from lattice.core.run.events import (
    RunFinished,
    RunStatus,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskPriorityChanged,
    TaskSkipped,
    TaskStarted,
)
from lattice.core.scheduler.commands import AwaitOutput
from lattice.core.scheduler.core import SchedulerCore
from lattice.core.scheduler.messages import (
    MessageType,
    RunTaskData,
    StartWorkerData,
    StopWorkerData,
    TaskControlData,
)
from lattice.core.scheduler.queue_view import QueueState
from lattice.executor.base import TaskOutcome
from lattice.vocabulary import BatchConfig
from tests.unit.scheduler_driver import Driver, GiB, task


def diamond() -> tuple[list, dict[str, set[str]]]:
    tasks = [task("a"), task("b", reads=["a"]), task("c", reads=["a"]), task("d", reads=["b", "c"])]
    return tasks, {"b": {"a"}, "c": {"a"}, "d": {"b", "c"}}


# --- progress -----------------------------------------------------------------------------------


def test_a_diamond_runs_each_task_once_its_inputs_are_ready_and_then_finishes() -> None:
    d = Driver()
    tasks, after = diamond()
    d.run("r1", tasks, after)
    assert sorted(s.task_name for s in d.running.values()) == ["name-a"]

    d.finish("a", 20)
    # Both branches go out in the same wake-up, with a's output as their input.
    assert sorted(s.task_name for s in d.running.values()) == ["name-b", "name-c"]
    assert d.running[d.key_of("b")].upstream_inputs == {"in_a": 20}
    d.finish("b")
    assert "name-d" not in {s.task_name for s in d.running.values()}
    d.finish("c")
    d.finish("d")

    end = d.finished()
    assert end.status is RunStatus.COMPLETED and dict(end.tasks) == {"completed": 4}
    assert [k for k, _ in d.kinds()].count("finish_task") == 4
    assert d.core.run_state("r1") is None  # forgotten once finished


def test_a_run_without_tasks_finishes_at_once() -> None:
    d = Driver()
    d.run("empty", [], {})
    assert d.kinds("empty") == [("finish_workflow", "completed")]
    assert d.finished("empty").tasks == ()


def test_tasks_wait_for_a_free_cpu_and_go_in_priority_order() -> None:
    d = Driver(cpus=1)
    d.run("r1", [task("busy")], {})
    d.run("r2", [task("low", "r2", priority=4), task("high", "r2", priority=0)], {})
    assert [s.task_name for s in d.running.values()] == ["name-busy"]

    d.finish("busy")
    assert [s.task_name for s in d.running.values()] == ["name-high"]


def test_a_task_no_node_can_ever_hold_fails_at_once_and_its_dependants_are_skipped() -> None:
    d = Driver(cpus=2)
    d.run("r1", [task("huge", cpu=64), task("next", reads=["huge"])], {"next": {"huge"}})

    failed = d.of("r1", TaskFailed)
    assert [f.error.type for f in failed] == ["ResourceUnavailableError"]
    assert "cpu=64" in failed[0].error.message
    skipped = d.of("r1", TaskSkipped)
    assert [(s.task_id, s.reason) for s in skipped] == [
        ("next", "upstream task name-huge (huge) failed")
    ]
    assert d.finished().status is RunStatus.FAILED


# --- failure and skip ---------------------------------------------------------------------------


def test_a_failure_skips_every_descendant_and_lets_independent_branches_finish() -> None:
    d = Driver(cpus=4)
    tasks = [task("a"), task("b", reads=["a"]), task("c", reads=["b"]), task("lone")]
    d.run("r1", tasks, {"b": {"a"}, "c": {"b"}})
    d.fail("a")

    assert [(s.task_id, s.reason) for s in d.of("r1", TaskSkipped)] == [
        ("b", "upstream task name-a (a) failed"),
        ("c", "upstream task name-a (a) failed"),
    ]
    assert d.of("r1", RunFinished) == []  # lone still runs
    d.finish("lone")
    end = d.finished()
    assert end.status is RunStatus.FAILED
    assert dict(end.tasks) == {"failed": 1, "skipped": 2, "completed": 1}


def test_a_failed_task_carries_its_error_and_node() -> None:
    d = Driver()
    d.run("r1", [task("a")], {})
    d.fail("a", "bad input")
    (failed,) = d.of("r1", TaskFailed)
    assert (failed.error.type, failed.error.message, failed.node_id) == (
        "ValueError",
        "bad input",
        d.node_id,
    )
    assert failed.to_wire()["error"]["traceback"] == "Traceback ..."


def test_a_reference_to_an_output_the_upstream_did_not_give_fails_the_reader() -> None:
    d = Driver()
    d.run("r1", [task("a"), task("b", reads=["a"])], {"b": {"a"}})
    key = d.key_of("a")
    d.done(key, TaskOutcome(value={"x": 1}), {})

    (failed,) = d.of("r1", TaskFailed)
    assert failed.task_id == "b" and failed.error.type == "InvalidReferenceError"
    assert "has no output 'out'" in failed.error.message


# --- cancellation -------------------------------------------------------------------------------


def test_cancel_stops_what_runs_and_cancels_what_waits_or_is_queued() -> None:
    d = Driver(cpus=1)
    tasks = [task("run"), task("queued"), task("waits", reads=["run"])]
    d.run("r1", tasks, {"waits": {"run"}})
    running_key = d.key_of("run")

    d.cancel("r1")

    assert d.cancels == [running_key]
    assert [e.task_id for e in d.of("r1", TaskCancelled)] == ["queued", "waits"]
    assert d.of("r1", RunFinished) == []  # the running task has not reported yet

    d.finish("run")  # whatever it returns, the run is cancelled
    assert [e.task_id for e in d.of("r1", TaskCancelled)] == ["queued", "waits", "run"]
    assert d.of("r1", TaskFinished) == []
    assert d.finished().status is RunStatus.CANCELLED
    assert d.of("r1", TaskSkipped) == []  # a cancelled run skips nothing


def test_cancelling_one_run_leaves_a_batch_it_shares_running_for_the_other() -> None:
    d = Driver()
    batch = BatchConfig(batch_size=2, batch_timeout=10.0)
    d.run("r1", [task("x", "r1", batch=batch, name="shared")], {})
    d.run("r2", [task("y", "r2", batch=batch, name="shared")], {})
    (key,) = d.running  # one submission for both runs
    d.cancel("r1")

    assert d.cancels == []
    outputs = [{"out": 1}, {"out": 2}]
    d.done(key, TaskOutcome(value=outputs), outputs)
    assert d.finished("r1").status is RunStatus.CANCELLED
    assert d.finished("r2").status is RunStatus.COMPLETED
    assert d.of("r2", TaskFinished)[0].result == {"out": 2}


def test_cancelling_twice_or_after_the_end_changes_nothing() -> None:
    d = Driver()
    d.run("r1", [task("a")], {})
    d.cancel("r1")
    d.cancel("r1")
    assert d.cancels == [d.key_of("a")]
    d.finish("a")
    d.cancel("r1")
    assert len(d.of("r1", RunFinished)) == 1


# --- batches ------------------------------------------------------------------------------------


def test_a_batch_goes_out_when_full_or_when_its_timeout_passes() -> None:
    d = Driver()
    batch = BatchConfig(batch_size=3, batch_timeout=5.0)
    d.run("r1", [task(f"t{i}", batch=batch, name="batched") for i in range(4)], {})
    # Three make a full batch at once; the fourth waits for the timeout.
    assert len(d.running) == 1
    (first,) = d.running.values()
    assert len(first.user_inputs) == 3
    assert d.core.next_deadline() == 5.0

    d.now = 5.0
    d.tick()
    assert len(d.running) == 2


# --- chains -------------------------------------------------------------------------------------


def test_a_chain_goes_out_whole_and_each_follower_starts_when_its_upstream_finishes() -> None:
    d = Driver(pipelines=True)
    tasks = [task("a"), task("b", reads=["a"]), task("c", reads=["b"])]
    d.run("r1", tasks, {"b": {"a"}, "c": {"b"}})

    # All three are with the executor at once; b and c await their upstream's output.
    assert sorted(s.task_name for s in d.running.values()) == ["name-a", "name-b", "name-c"]
    b = d.running[d.key_of("b")]
    assert b.upstream_inputs == {"in_a": AwaitOutput(d.key_of("a"), "out")}
    assert [e.task_id for e in d.of("r1", TaskStarted)] == ["a"]  # only a has started

    d.finish("a")
    assert [e.task_id for e in d.of("r1", TaskStarted)] == ["a", "b"]
    d.finish("b")
    d.finish("c")
    assert d.finished().status is RunStatus.COMPLETED


def test_a_follower_that_reports_before_its_upstream_waits_for_it() -> None:
    d = Driver(pipelines=True)
    d.run("r1", [task("a"), task("b", reads=["a"])], {"b": {"a"}})
    d.finish("b")  # the executor happened to report b first
    assert d.of("r1", TaskFinished) == []

    d.finish("a")
    assert [e.task_id for e in d.of("r1", TaskFinished)] == ["a", "b"]
    assert d.finished().status is RunStatus.COMPLETED


def test_when_the_upstream_of_a_chain_fails_its_followers_are_withdrawn_and_skipped() -> None:
    d = Driver(pipelines=True)
    d.run(
        "r1", [task("a"), task("b", reads=["a"]), task("c", reads=["b"])], {"b": {"a"}, "c": {"b"}}
    )
    b_key, c_key = d.key_of("b"), d.key_of("c")

    d.fail("a")

    assert set(d.cancels) == {b_key, c_key}
    assert [s.task_id for s in d.of("r1", TaskSkipped)] == ["b", "c"]
    assert d.finished().status is RunStatus.FAILED
    d.done(b_key, TaskOutcome(value={"out": 1}))
    assert len(d.of("r1", RunFinished)) == 1  # a late report changes nothing


def test_a_follower_the_executor_refuses_waits_and_goes_out_when_its_upstream_finished() -> None:
    d = Driver(pipelines=True)
    d.refuse.add("r1/b")
    d.run("r1", [task("a"), task("b", reads=["a"])], {"b": {"a"}})
    assert [s.task_name for s in d.running.values()] == ["name-a"]

    d.refuse.clear()
    d.finish("a", 5)
    assert d.running[d.key_of("b")].upstream_inputs == {"in_a": 5}


def test_a_task_the_executor_refuses_fails_with_the_reason() -> None:
    d = Driver()
    d.refuse.add("r1/a")
    d.run("r1", [task("a")], {})
    (failed,) = d.of("r1", TaskFailed)
    assert failed.error.message == "refused"
    assert d.finished().status is RunStatus.FAILED


# --- node loss ----------------------------------------------------------------------------------


def test_a_task_lost_with_its_node_starts_again_elsewhere_as_a_new_attempt() -> None:
    d = Driver()
    d.send(
        MessageType.START_WORKER,
        StartWorkerData("w1", "10.0.0.2", NodeResources(cpu_count=2, memory_bytes=GiB)),
    )
    d.run("r1", [task("a", cpu=2), task("b", cpu=2)], {})
    nodes = {s.task_name: s.node.node_id for s in d.running.values()}
    assert set(nodes.values()) == {d.node_id, "w1"}
    lost_on = nodes["name-a"]

    d.lose("a")
    # It avoids the node it was lost on while another can take it: it waits for b's node.
    assert [s.attempt for s in d.of("r1", TaskStarted) if s.task_id == "a"] == [1]
    d.finish("b")
    starts = [s for s in d.of("r1", TaskStarted) if s.task_id == "a"]
    assert [s.attempt for s in starts] == [1, 2]
    assert starts[-1].to_wire()["attempt"] == 2 and "attempt" not in starts[0].to_wire()
    assert starts[-1].node_id == ("w1" if lost_on == d.node_id else d.node_id)


def test_a_task_lost_on_every_attempt_fails_once_saying_so() -> None:
    d = Driver(max_attempts=2)
    d.run("r1", [task("a")], {})
    d.lose("a")
    d.lose("a")

    (failed,) = d.of("r1", TaskFailed)
    assert failed.error.type == "WorkerLostError"
    assert failed.error.message.endswith("(gave up after 2 attempts)")
    assert d.finished().status is RunStatus.FAILED


def test_a_late_report_from_an_attempt_given_up_as_lost_is_ignored() -> None:
    d = Driver()
    d.send(
        MessageType.START_WORKER,
        StartWorkerData("w1", "10.0.0.2", NodeResources(cpu_count=8, memory_bytes=GiB)),
    )
    d.run("r1", [task("a", cpu=4)], {})
    first_key = d.key_of("a")
    assert d.running[first_key].node.node_id == "w1"

    d.rm.add_node("w2", "10.0.0.3", NodeResources(cpu_count=8, memory_bytes=GiB))
    d.observe({d.node_id, "w2"})  # w1 left the cluster: its task is lost at once
    second_key = d.key_of("a")
    assert second_key != first_key

    late = TaskOutcome(value={"out": "old"})
    d.done(first_key, late, {"out": "old"})
    assert d.of("r1", TaskFinished) == []
    d.finish("a", "new")
    assert [f.result for f in d.of("r1", TaskFinished)] == [{"out": "new"}]


def test_a_drained_node_is_released_once_it_runs_nothing() -> None:
    d = Driver()
    d.send(
        MessageType.START_WORKER,
        StartWorkerData("w1", "10.0.0.2", NodeResources(cpu_count=8, memory_bytes=GiB)),
    )
    d.run("r1", [task("a", cpu=4)], {})
    d.send(MessageType.STOP_WORKER, StopWorkerData("w1"))
    assert d.released == []
    d.finish("a")
    assert d.released == ["w1"]


def test_a_worker_the_cluster_does_not_have_is_ignored() -> None:
    d = Driver()
    d.send(
        MessageType.START_WORKER,
        StartWorkerData("ghost", "10.0.0.9", NodeResources(cpu_count=8, memory_bytes=GiB), False),
    )
    assert "ghost" not in d.core.known_node_ids()


def test_shutdown_cancels_what_runs_and_stops() -> None:
    d = Driver()
    d.run("r1", [task("a")], {})
    d.send(MessageType.SHUTDOWN)
    assert d.cancels == [d.key_of("a")] and d.stopped


# --- a bug while deciding -----------------------------------------------------------------------


def test_a_bug_while_deciding_fails_the_run_loudly_instead_of_leaving_it_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = Driver()
    d.run("r1", [task("a"), task("b", reads=["a"])], {"b": {"a"}})
    d.run("r2", [task("x", "r2")], {})

    def broken(*args: object) -> None:
        raise KeyError("injected")

    monkeypatch.setattr(SchedulerCore, "_settle", broken)
    key = d.key_of("a")
    d.finish("a")

    failed = d.of("r1", TaskFailed)
    assert {f.task_id for f in failed} == {"a", "b"}
    assert all(f.error.type == "SchedulerError" for f in failed)
    assert "KeyError: 'injected'" in failed[0].error.message
    assert "broken" in failed[0].error.traceback
    assert d.finished("r1").status is RunStatus.FAILED
    assert key not in d.running
    monkeypatch.undo()
    d.finish("x")  # the other run is untouched
    assert d.finished("r2").status is RunStatus.COMPLETED


def test_an_open_ended_run_takes_tasks_one_at_a_time_until_cleared() -> None:
    d = Driver()
    d.send(MessageType.RUN_TASK, RunTaskData(task("a", "call")))
    d.finish("a", 1)
    d.send(MessageType.RUN_TASK, RunTaskData(task("b", "call", reads=["a"])))
    assert d.running[d.key_of("b")].upstream_inputs == {"in_a": 1}
    d.finish("b")
    assert d.of("call", RunFinished) == []


def test_the_queue_view_says_where_each_open_task_is_and_why() -> None:
    d = Driver(cpus=1)
    batch = BatchConfig(batch_size=5, batch_timeout=10.0)
    d.run(
        "r1",
        [task("run"), task("queued", priority=4), task("after", reads=["run"])],
        {"after": {"run"}},
    )
    d.run("r2", [task("b", "r2", batch=batch, name="batched")], {})
    d.now = 4.0

    view = {t.task_id: t for t in d.core.queue_view(d.now).tasks}

    assert view["run"].state is QueueState.RUNNING and view["run"].node_id == d.node_id
    assert view["queued"].state is QueueState.WAITING_FOR_RESOURCES
    assert view["queued"].waited == 4.0 and view["queued"].priority == 4
    assert "local: 0 of cpu=1 free" in (view["queued"].reason or "")
    assert view["after"].state is QueueState.WAITING_FOR_INPUTS and view["after"].waited == 0
    assert view["b"].state is QueueState.IN_BATCH
    assert view["b"].reason == "in a batch of 1/5, due in 6.00s"
    status = d.core.queue_view(d.now).status()
    assert status["total"] == 4 and status["by_priority"]["idle"] == 1


def control(d: Driver, kind: MessageType, task_id: str, priority: int | None = None) -> None:
    d.send(kind, TaskControlData("r1", task_id, priority))


def test_one_task_is_cancelled_wherever_it_is_and_its_dependants_are_skipped() -> None:
    d = Driver(cpus=1, pipelines=True)
    tasks = [
        task("run"),
        task("chained", reads=["run"]),
        task("queued"),
        task("waits", reads=["queued"]),
        task("lone"),
    ]
    d.run("r1", tasks, {"chained": {"run"}, "waits": {"queued"}})
    chained_key = d.key_of("chained")

    control(d, MessageType.CANCEL_TASK, "queued")
    control(d, MessageType.CANCEL_TASK, "chained")
    assert [e.task_id for e in d.of("r1", TaskCancelled)] == ["queued", "chained"]
    assert [(s.task_id, s.reason) for s in d.of("r1", TaskSkipped)] == [
        ("waits", "upstream task queued was cancelled")
    ]
    assert d.cancels == [chained_key]

    run_key = d.key_of("run")
    control(d, MessageType.CANCEL_TASK, "run")
    assert d.cancels == [chained_key, run_key]
    d.finish("run")  # it finished anyway: reported cancelled, its result dropped
    assert [e.task_id for e in d.of("r1", TaskCancelled)] == ["queued", "chained", "run"]
    d.finish("lone")
    assert d.finished().status is RunStatus.CANCELLED
    assert [e.task_id for e in d.of("r1", TaskFinished)] == ["lone"]


def test_a_priority_change_requeues_a_task_ahead_and_is_recorded() -> None:
    d = Driver(cpus=1)
    d.run("r1", [task("busy"), task("a"), task("b")], {})
    control(d, MessageType.SET_TASK_PRIORITY, "b", 0)
    control(d, MessageType.SET_TASK_PRIORITY, "busy", 0)  # running: nothing to change

    (change,) = d.of("r1", TaskPriorityChanged)
    assert (change.task_id, change.priority, change.previous) == ("b", 0, 2)
    d.finish("busy")
    assert [s.task_name for s in d.running.values()] == ["name-b"]
    assert d.core.run_state("r1").task("b").priority == 0  # type: ignore[union-attr]
