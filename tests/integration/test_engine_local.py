"""The engine end to end, in process: Orchestrator -> Scheduler thread -> executor -> run log.

:class:`EngineScenarios` holds the scenarios every executor must pass; ``TestLocalEngine``
runs them on the LocalExecutor, ``test_engine_ray.TestRayEngine`` on a real local Ray. The
scheduler-thread tests at the end drive a bare Scheduler through its MessageBus.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.core.resource.manager import ResourceManager
from lattice.core.resource.node import NodeResources
from lattice.core.run.events import TaskFailed, TaskFinished, TaskStarted
from lattice.core.runtime.task import CodeTaskRuntime
from lattice.core.scheduler.core import SchedulerCore
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    RunControlData,
    RunTaskData,
)
from lattice.core.scheduler.scheduler import Scheduler
from lattice.core.workflow.inputs import TaskRef
from lattice.exceptions import ForbiddenError, LatticeUsageError, NodeNotFoundError
from lattice.executor.local_executor import LocalExecutor
from lattice.serialization import decode_value, dumps_b64
from lattice.vocabulary import BatchConfig, TaskResourceRequirements, code_digest
from tests.integration import engine_helpers as h
from tests.integration.engine_helpers import (
    NODE_CPUS,
    Engine,
    Ref,
    WorkflowBuilder,
    is_event,
    run_workflow,
    wait_for_event,
    wait_run,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"


class EngineScenarios:
    """Every scenario of the engine, on the executor of the ``engine`` fixture."""

    # --- shapes of workflows ------------------------------------------------------------------

    def test_a_chain_passes_each_output_to_the_next_task(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            first = b.add(h.add_one, {"x": 1})
            second = b.add(h.add_one, {"x": Ref(first)})
            third = b.add(h.times_ten, {"x": Ref(second)})

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            assert [run.result(t)["out"] for t in (first, second, third)] == [2, 3, 30]
            assert run.seq("start_task", second) > run.seq("finish_task", first)
            assert run.seq("start_task", third) > run.seq("finish_task", second)
            done = run.of_type("finish_workflow")[0]["data"]
            assert done["success"] is True and done["tasks"] == {"completed": 3}

        engine.run(body)

    def test_fan_out_then_fan_in(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            source = b.add(h.const, {"value": 5})
            branches = [b.add(h.add_one, {"x": Ref(source)}) for _ in range(4)]
            join = b.add(h.total, {f"v{i}": Ref(t) for i, t in enumerate(branches)})

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            assert [run.result(t)["out"] for t in branches] == [6, 6, 6, 6]
            assert run.result(join)["out"] == 24
            assert run.seq("start_task", join) > max(run.seq("finish_task", t) for t in branches)
            assert min(run.seq("start_task", t) for t in branches) > run.seq("finish_task", source)

        engine.run(body)

    def test_a_diamond_joins_both_paths(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            top = b.add(h.const, {"value": 2})
            left = b.add(h.add_one, {"x": Ref(top)})
            right = b.add(h.times_ten, {"x": Ref(top)})
            bottom = b.add(h.pair, {"a": Ref(left), "b": Ref(right)})

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            assert run.result(bottom)["out"] == [3, 20]
            assert len(run.of_type("start_task")) == 4  # the join ran once
            assert run.seq("start_task", bottom) > max(
                run.seq("finish_task", left), run.seq("finish_task", right)
            )

        engine.run(body)

    def test_results_json_cannot_hold_reach_dependants_and_the_log_intact(
        self, engine: Engine
    ) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            source = b.add(h.not_json, outputs=("out", "blob", "keys"))
            reader = b.add(h.type_name, {"x": Ref(source)})

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            assert run.result(source) == {"out": (1, 2), "blob": b"\x00\x01", "keys": {1: "one"}}
            assert run.result(reader) == {"out": "tuple"}

        engine.run(body)

    # --- concurrency --------------------------------------------------------------------------

    def test_three_light_tasks_run_at_the_same_time(self, engine: Engine) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            # All three wait at one gate together: they can only get there running at once.
            gated = WorkflowBuilder(orch)
            for _ in range(3):
                gated.add(h.gated, {"gate": gate.port}, cpu=0.1)
            gated_run = orch.run_workflow(gated.workflow_id)
            await gate.arrived(3)
            await gate.open(3)
            assert (await wait_run(orch, gated_run)).status == COMPLETED

            # Three 1-second tasks overlap: each starts before any of them ends.
            b = WorkflowBuilder(orch)
            tasks = [b.add(h.timed_sleep, {"seconds": 1.0}, cpu=0.1) for _ in range(3)]
            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            spans = [run.result(t) for t in tasks]
            assert max(s["start"] for s in spans) < min(s["end"] for s in spans), spans

        engine.run(body)

    def test_two_concurrent_runs_of_one_workflow_keep_their_own_completions_and_results(
        self, engine: Engine
    ) -> None:
        gate_a, gate_b = engine.gate(), engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            a = b.add(h.gated, {"gate": gate_a.port}, name="a")
            bb = b.add(h.gated, {"gate": gate_b.port}, name="b")
            c = b.add(h.pair, {"a": Ref(a), "b": Ref(bb)}, name="c")
            runs = [orch.run_workflow(b.workflow_id), orch.run_workflow(b.workflow_id)]

            # Let one `a` and one `b` finish, then steer the other run so that its `b`
            # finishes while its own `a` is still at the gate. Had the runs shared completion
            # marks, that `b` would release `c` early, without this run's `a`.
            await gate_a.open(1)
            with_a = await h.first_run_with(orch, runs, is_event("finish_task", a))
            await gate_b.open(1)
            with_b = await h.first_run_with(orch, runs, is_event("finish_task", bb))
            if with_a == with_b:
                other = next(r for r in runs if r != with_a)
                await wait_run(orch, with_a)
                await gate_b.open(1)
                await wait_for_event(orch, other, is_event("finish_task", bb))
                await gate_a.open(1)
            else:
                await gate_a.open(1)
                await gate_b.open(1)

            done = [await wait_run(orch, r) for r in runs]
            for run in done:
                assert run.status == COMPLETED, run.messages
                assert run.seq("start_task", c) > max(
                    run.seq("finish_task", a), run.seq("finish_task", bb)
                )
                own = [run.result(a)["out"], run.result(bb)["out"]]
                assert run.result(c)["out"] == own
            assert done[0].result(a) != done[1].result(a)
            assert done[0].result(bb) != done[1].result(bb)

        engine.run(body)

    def test_an_unrelated_run_is_not_held_up_by_a_long_task(self, engine: Engine) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            slow = WorkflowBuilder(orch)
            long_task = slow.add(h.gated, {"gate": gate.port})
            quick = WorkflowBuilder(orch)
            first = quick.add(h.add_one, {"x": 1})
            second = quick.add(h.add_one, {"x": Ref(first)})

            slow_run = orch.run_workflow(slow.workflow_id)
            await gate.arrived(1)
            quick_run = await run_workflow(orch, quick.workflow_id)

            assert quick_run.status == COMPLETED
            assert quick_run.result(second)["out"] == 3
            slow_log = orch.get_run_log(slow_run)
            assert not slow_log.closed
            assert slow_log.summary()["tasks"][long_task]["status"] == "running"

            await gate.open(1)
            assert (await wait_run(orch, slow_run)).status == COMPLETED

        engine.run(body)

    # --- resources ----------------------------------------------------------------------------

    def test_a_task_that_does_not_fit_now_waits_and_starts_as_resources_free(
        self, engine: Engine
    ) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            tasks = [
                b.add(h.timed_sleep, {"seconds": 0.3, "value": i}, cpu=NODE_CPUS - 1)
                for i in range(2)
            ]

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            first, second = sorted(tasks, key=lambda t: run.seq("start_task", t))
            assert run.result(second)["start"] >= run.result(first)["end"]
            # Dispatched the moment the first one's resources were released.
            assert run.seq("start_task", second) == run.seq("finish_task", first) + 1

        engine.run(body)

    def test_a_task_that_can_never_fit_fails_at_once_saying_why(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            huge = b.add(h.add_one, {"x": 1}, cpu=100, name="huge")
            after = b.add(h.add_one, {"x": Ref(huge)})
            fine = b.add(h.add_one, {"x": 1})

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == FAILED
            error = run.error(huge)
            assert error["type"] == "ResourceUnavailableError"
            assert "task asks for cpu=100" in error["message"]
            assert f"has cpu={NODE_CPUS}," in error["message"]
            assert run.task_status(after) == "skipped"
            assert run.task_status(fine) == "completed"
            assert not [m for m in run.of_type("start_task") if m["data"]["task_id"] == huge]

        engine.run(body)

    # --- batching -----------------------------------------------------------------------------

    def test_batchable_tasks_run_in_one_call_and_each_gets_its_own_result(
        self, engine: Engine
    ) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            # Released by size: a timeout longer than the test means size did it.
            batch = {"batch_size": 3, "batch_timeout": 600}
            items = [b.add(h.batch_double, {"x": i}, name="double", batch=batch) for i in range(3)]
            join = b.add(h.total, {f"v{i}": Ref(t) for i, t in enumerate(items)})

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            results = [run.result(t) for t in items]
            assert [r["out"] for r in results] == [0, 2, 4]
            assert len({r["call"] for r in results}) == 1
            assert {r["size"] for r in results} == {3}
            assert run.result(join)["out"] == 6

        engine.run(body)

    def test_a_partial_batch_is_released_by_its_timeout(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            batch = {"batch_size": 10, "batch_timeout": 0.3}
            items = [b.add(h.batch_double, {"x": i}, name="double", batch=batch) for i in range(4)]

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            results = [run.result(t) for t in items]
            assert [r["out"] for r in results] == [0, 2, 4, 6]
            assert len({r["call"] for r in results}) == 1
            assert {r["size"] for r in results} == {4}

        engine.run(body)

    def test_batches_are_grouped_by_task_name(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            batch = {"batch_size": 2, "batch_timeout": 600}
            left = [b.add(h.batch_double, {"x": i}, name="left", batch=batch) for i in (1, 2)]
            right = [b.add(h.batch_double, {"x": i}, name="right", batch=batch) for i in (3, 4)]

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED
            calls = {
                name: {run.result(t)["call"] for t in ids}
                for name, ids in (("left", left), ("right", right))
            }
            assert len(calls["left"]) == 1 and len(calls["right"]) == 1
            assert calls["left"] != calls["right"]
            assert [run.result(t)["out"] for t in left + right] == [2, 4, 6, 8]

        engine.run(body)

    def test_a_bad_reference_in_a_batch_fails_only_its_own_task(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            source = b.declare("source")
            batch = {"batch_size": 2, "batch_timeout": 600}
            broken = b.add(h.batch_double, {"x": Ref(source, "y")}, name="double", batch=batch)
            fine = b.add(h.batch_double, {"x": Ref(source, "out")}, name="double", batch=batch)
            b.save(source, h.const, {"value": 5}, outputs=("out",))

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == FAILED
            assert run.error(broken)["type"] == "InvalidReferenceError"
            assert f"task {source} has no output 'y'" in run.error(broken)["message"]
            assert run.result(fine)["out"] == 10

        engine.run(body)

    # --- failure ------------------------------------------------------------------------------

    def test_a_failing_task_skips_its_dependants_and_independent_branches_finish(
        self, engine: Engine
    ) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            bad = b.add(h.fail, {"x": 7}, name="bad")
            child = b.add(h.add_one, {"x": Ref(bad)}, name="child")
            grandchild = b.add(h.add_one, {"x": Ref(child)}, name="grandchild")
            good = b.add(h.const, {"value": 1}, name="good")
            good_child = b.add(h.add_one, {"x": Ref(good)}, name="good_child")

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == FAILED
            error = run.error(bad)
            assert error["type"] == "ValueError"
            assert error["message"] == "cannot handle x=7"
            assert "Traceback (most recent call last)" in error["traceback"]
            assert "in fail" in error["traceback"]
            assert "ValueError: cannot handle x=7" in error["traceback"]
            for skipped in (child, grandchild):
                assert run.task_status(skipped) == "skipped"
                reason = run.event("task_skipped", skipped)["data"]["reason"]
                assert reason == f"upstream task bad ({bad}) failed"
            assert run.task_status(good) == "completed"
            assert run.result(good_child)["out"] == 2
            started = {m["data"]["task_id"] for m in run.of_type("start_task")}
            assert started == {bad, good, good_child}
            finish = run.of_type("finish_workflow")[0]["data"]
            assert finish["success"] is False
            assert finish["tasks"] == {"failed": 1, "skipped": 2, "completed": 2}
            summary = orch.get_run_log(run.run_id).summary()
            assert summary["tasks"][bad]["error"]["type"] == "ValueError"

        engine.run(body)

    def test_a_reference_to_an_output_that_does_not_exist_fails_the_task_naming_both(
        self, engine: Engine
    ) -> None:
        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            source = b.declare("source")
            # Saved while `source` declares no outputs yet, so nothing can check the key...
            reader = b.add(h.add_one, {"x": Ref(source, "y")}, name="reader")
            # ...then `source` is saved producing only "out".
            b.save(source, h.const, {"value": 1}, outputs=("out",))

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == FAILED
            assert run.result(source) == {"out": 1}
            error = run.error(reader)
            assert error["type"] == "InvalidReferenceError"
            assert f"task {source} has no output 'y'" in error["message"]
            assert "['out']" in error["message"]

        engine.run(body)

    # --- control ------------------------------------------------------------------------------

    def test_cancel_a_run_with_running_queued_and_pending_tasks(self, engine: Engine) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            running = b.add(h.gated, {"gate": gate.port}, cpu=NODE_CPUS - 1, name="running")
            queued = b.add(h.add_one, {"x": 1}, cpu=NODE_CPUS - 1, name="queued")
            pending = b.add(h.add_one, {"x": Ref(running)}, name="pending")
            run_id = orch.run_workflow(b.workflow_id)
            await gate.arrived(1)

            orch.cancel_run(run_id)
            # `queued` is cancelled by the scheduler: the cancellation has reached it.
            await wait_for_event(orch, run_id, is_event("task_cancelled", queued))
            await gate.open(1)
            run = await wait_run(orch, run_id)

            assert run.status == CANCELLED
            for task in (running, queued, pending):
                assert run.task_status(task) == "cancelled"
            assert run.of_type("finish_task") == []

            # The cancelled task's CPUs came back: a task needing the whole node runs.
            whole = WorkflowBuilder(orch)
            big = whole.add(h.add_one, {"x": 1}, cpu=NODE_CPUS)
            after = await run_workflow(orch, whole.workflow_id)
            assert after.status == COMPLETED and after.result(big)["out"] == 2

        engine.run(body)

    def test_a_langgraph_node_call_returns_its_value_or_its_error(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            wf = orch.create_workflow()
            node = orch.add_langgraph_task(
                wf.workflow_id, "langgraph", "greet", dumps_b64(h.greet), {"cpu": 0.1}
            )
            broken = orch.add_langgraph_task(
                wf.workflow_id, "langgraph", "refuse", dumps_b64(h.refuse), {"cpu": 0.1}
            )

            value, error = await orch.run_langgraph_task(
                wf.workflow_id, node, dumps_b64(("world",)), dumps_b64({"punctuation": "?"})
            )
            assert error is None and decode_value(value) == "hello world?"

            value, error = await orch.run_langgraph_task(
                wf.workflow_id, broken, dumps_b64(("nobody",)), ""
            )
            assert value is None and error is not None
            assert (error.type, error.message) == ("KeyError", "'nobody'")

        engine.run(body)

    def test_cleanup_ends_open_runs_as_cancelled(self, engine: Engine) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            stuck = b.add(h.gated, {"gate": gate.port})
            run_id = orch.run_workflow(b.workflow_id)
            await gate.arrived(1)

            engine.stop(orch)

            log = orch.get_run_log(run_id)
            assert log.closed and log.status == CANCELLED
            finish = log.events()[-1].to_message()["data"]
            assert finish["reason"] == "server shutting down"
            assert log.summary()["tasks"][stuck]["status"] == "cancelled"

        engine.run(body)

    def test_a_scheduler_bug_fails_the_run_it_concerns_instead_of_hanging_it(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settle = SchedulerCore._settle

        def buggy(core: SchedulerCore, running: Any, data: Any) -> Any:
            if running.item.tasks[0].task_name == "times_ten":
                raise RuntimeError("injected scheduler bug")
            return settle(core, running, data)

        monkeypatch.setattr(SchedulerCore, "_settle", buggy)

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            first = b.add(h.times_ten, {"x": 1})
            after = b.add(h.add_one, {"x": Ref(first)})
            healthy = WorkflowBuilder(orch)
            fine = healthy.add(h.add_one, {"x": 1})

            run = await run_workflow(orch, b.workflow_id)
            other = await run_workflow(orch, healthy.workflow_id)

            assert run.status == FAILED
            errors = {
                m["data"]["task_id"]: m["data"]["error"] for m in run.of_type("task_exception")
            }
            assert set(errors) == {first, after}
            assert {e["type"] for e in errors.values()} == {"SchedulerError"}
            assert "RuntimeError: injected scheduler bug" in errors[first]["message"]
            assert "buggy" in errors[first]["traceback"]
            assert other.status == COMPLETED and other.result(fine)["out"] == 2

        engine.run(body)

    def test_each_run_works_on_its_own_copy_of_the_workflow(self, engine: Engine) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            head = b.add(h.gated, {"gate": gate.port})
            tail = b.add(h.pair, {"a": Ref(head), "b": "before"})
            run_id = orch.run_workflow(b.workflow_id)
            await gate.arrived(1)

            # Editing the definition mid-run changes later runs only.
            b.save(tail, h.pair, {"a": Ref(head), "b": "after"})
            await gate.open(1)
            run = await wait_run(orch, run_id)

            assert run.status == COMPLETED
            assert run.result(tail)["out"][1] == "before"
            later_id = orch.run_workflow(b.workflow_id)
            await gate.open(1)
            later = await wait_run(orch, later_id)
            assert later.result(tail)["out"][1] == "after"

        engine.run(body)


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine(
        "local",
        LocalExecutor,
        owns_executor=True,
        local_resources=NodeResources(cpu_count=NODE_CPUS, memory_bytes=8 * h.GiB),
    )
    yield eng
    eng.close()


class TestLocalEngine(EngineScenarios):
    """The scenarios on the LocalExecutor, plus what only an in-process engine shows."""

    def test_a_local_engine_takes_no_worker_nodes_and_keeps_its_own(self, engine: Engine) -> None:
        async def body(orch: Orchestrator) -> None:
            def nodes() -> list[tuple[str, str, Any]]:
                return [(n["node_id"], n["state"], n["total"]) for n in orch.nodes()]

            before = nodes()
            with pytest.raises(LatticeUsageError, match="takes no workers"):
                orch.add_worker("10.0.0.7", "worker-1", {"cpu": 16, "cpu_mem": 1024})
            with pytest.raises(ForbiddenError, match="own node"):
                orch.add_worker("127.0.0.1", "local", {"cpu": 0})
            with pytest.raises(ForbiddenError, match="own node"):
                orch.remove_worker("local")
            with pytest.raises(NodeNotFoundError, match="not connected"):
                orch.remove_worker("worker-1")
            b = WorkflowBuilder(orch)
            one = b.add(h.add_one, {"x": 1}, cpu=1)

            run = await run_workflow(orch, b.workflow_id)

            assert run.status == COMPLETED and run.event("start_task", one)
            assert nodes() == before

        engine.run(body)


# --- the scheduler thread on its own ----------------------------------------------------------


class RecordingBus(MessageBus):
    """A MessageBus that reports each time the scheduler waits on its inbox, and how long."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: queue.SimpleQueue[float | None] = queue.SimpleQueue()

    def receive_in_scheduler(self, timeout: float | None = None) -> Message | None:
        self.waits.put(timeout)
        return super().receive_in_scheduler(timeout)


def runtime(
    task_id: str,
    fn: Any,
    *,
    run_id: str = "r1",
    user: dict[str, Any] | None = None,
    upstream: tuple[tuple[str, TaskRef], ...] = (),
    batch: BatchConfig | None = None,
) -> CodeTaskRuntime:
    code = cloudpickle.dumps(fn)
    return CodeTaskRuntime(
        run_id=run_id,
        workflow_id="wf",
        task_id=task_id,
        task_name=task_id,
        code=code,
        code_id=code_digest(code),
        requirements=TaskResourceRequirements(cpu=0.1),
        outputs=("out",),
        user_inputs=user or {},
        upstream=upstream,
        batch=batch,
    )


@pytest.fixture
def scheduler() -> Iterator[tuple[Scheduler, RecordingBus]]:
    bus = RecordingBus()
    rm = ResourceManager()
    rm.initialize_local(NodeResources(cpu_count=NODE_CPUS, memory_bytes=h.GiB))
    executor = LocalExecutor()
    executor.initialize()
    sched = Scheduler(bus, executor, rm)
    sched.start()
    assert bus.wait_ready(10)
    yield sched, bus
    bus.send_to_scheduler(Message(MessageType.SHUTDOWN))
    assert sched.join(10), "the scheduler thread did not stop on SHUTDOWN"
    executor.shutdown()


def settled(bus: MessageBus) -> Message:
    """The next message from the scheduler that ends a task."""
    while True:
        message = bus.receive_from_scheduler(timeout=h.WAIT)
        assert message is not None, "no message from the scheduler"
        if not isinstance(message.data, TaskStarted):
            return message


def test_the_idle_scheduler_blocks_on_its_inbox_with_no_timer(
    scheduler: tuple[Scheduler, RecordingBus],
) -> None:
    _, bus = scheduler

    assert bus.waits.get(timeout=h.WAIT) is None  # idle: waits for a message, no timeout
    batch = BatchConfig(batch_size=5, batch_timeout=60.0)
    bus.send_to_scheduler(
        Message(MessageType.RUN_TASK, RunTaskData(runtime("b", h.batch_double, batch=batch)))
    )

    # With a batch open, the only timed wait is until that batch is due.
    timeout = bus.waits.get(timeout=h.WAIT)
    assert timeout is not None and 0 < timeout <= 60.0


def test_results_are_looked_up_within_a_run_until_the_run_is_cleared(
    scheduler: tuple[Scheduler, RecordingBus],
) -> None:
    _, bus = scheduler
    first = runtime("a", h.const, user={"value": 41})
    bus.send_to_scheduler(Message(MessageType.RUN_TASK, RunTaskData(first)))
    done = settled(bus)
    assert isinstance(done.data, TaskFinished) and done.data.result == {"out": 41}

    ref = (("x", TaskRef("a", "out")),)
    bus.send_to_scheduler(
        Message(MessageType.RUN_TASK, RunTaskData(runtime("b", h.add_one, upstream=ref)))
    )
    done = settled(bus)
    assert isinstance(done.data, TaskFinished) and done.data.result == {"out": 42}

    # Another run does not see run r1's results.
    bus.send_to_scheduler(
        Message(
            MessageType.RUN_TASK, RunTaskData(runtime("b", h.add_one, run_id="r2", upstream=ref))
        )
    )
    failed = settled(bus)
    assert isinstance(failed.data, TaskFailed) and failed.data.run_id == "r2"

    bus.send_to_scheduler(Message(MessageType.CLEAR_WORKFLOW, RunControlData("r1")))
    bus.send_to_scheduler(
        Message(MessageType.RUN_TASK, RunTaskData(runtime("c", h.add_one, upstream=ref)))
    )
    failed = settled(bus)
    assert isinstance(failed.data, TaskFailed)
    assert failed.data.error.type == "InvalidReferenceError"
    assert failed.data.error.message == "reference a.out: task a has no result in this run"


def test_a_stopped_workflow_has_its_queued_tasks_cancelled(
    scheduler: tuple[Scheduler, RecordingBus],
) -> None:
    _, bus = scheduler
    batch = BatchConfig(batch_size=5, batch_timeout=600.0)
    for task_id in ("x", "y"):
        bus.send_to_scheduler(
            Message(
                MessageType.RUN_TASK, RunTaskData(runtime(task_id, h.batch_double, batch=batch))
            )
        )
    bus.send_to_scheduler(Message(MessageType.STOP_WORKFLOW, RunControlData("r1")))

    reports = [settled(bus), settled(bus)]
    assert [m.message_type for m in reports] == [MessageType.TASK_CANCELLED] * 2
    assert sorted(m.data.task_id for m in reports) == ["x", "y"]  # type: ignore[union-attr]


def test_shutdown_stops_the_scheduler_thread() -> None:
    bus = MessageBus()
    rm = ResourceManager()
    rm.initialize_local(NodeResources(cpu_count=1, memory_bytes=h.GiB))
    executor = LocalExecutor()
    sched = Scheduler(bus, executor, rm)
    sched.start()
    try:
        assert bus.wait_ready(10)
        assert not sched.join(0)
        bus.send_to_scheduler(Message(MessageType.SHUTDOWN))
        assert sched.join(10)
    finally:
        executor.shutdown()
