"""Cancellation reaches the task: its token is set, and a task that ignores it is stopped.

The scenarios run on the LocalExecutor (threads) and on a real local Ray. Each would hang (and
fail at its timeout) if the scheduler did not ask the executor to cancel a running task: the
gated tasks here are never let through before the run is awaited.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle
import pytest

from lattice.context import TaskContext
from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.core.resource.node import NodeResources
from lattice.executor.local_executor import LocalExecutor
from tests.integration import engine_helpers as h
from tests.integration.engine_helpers import (
    NODE_CPUS,
    WAIT,
    Engine,
    Ref,
    WorkflowBuilder,
    run_workflow,
    wait_run,
)

if TYPE_CHECKING:
    from lattice.executor.ray.executor import RayExecutor

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def arrive(port: int) -> None:
    """Tell the gate on ``port`` that this point was reached, without waiting there."""
    socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def cooperative(p: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Arrives at ``started``, waits on its token, then arrives at ``saw_cancel``."""
    arrive(p["started"])
    cancelled = ctx.wait_cancelled(4 * WAIT)
    if cancelled:
        arrive(p["saw_cancel"])
    return {"out": cancelled}


def stubborn(p: dict[str, Any]) -> dict[str, Any]:
    """Ignores cancellation: waits at the gate, then arrives at ``returned``."""
    h.pass_gate(p["gate"])
    arrive(p["returned"])
    return {"out": "late"}


class CancelScenarios:
    def test_an_uncooperative_task_is_stopped_when_its_run_is_cancelled(
        self, engine: Engine
    ) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            blocked = b.add(h.gated, {"gate": gate.port}, cpu=NODE_CPUS, name="blocked")
            after = b.add(h.add_one, {"x": Ref(blocked)}, name="after")
            run_id = orch.run_workflow(b.workflow_id)
            await gate.arrived(1)

            orch.cancel_run(run_id)
            # The gate stays shut: the run ends only if the executor stopped the task.
            run = await wait_run(orch, run_id)

            assert run.status == "cancelled"
            assert run.task_status(blocked) == "cancelled"
            assert run.task_status(after) == "cancelled"
            assert run.of_type("finish_task") == []
            # Its CPUs came back at once: a task needing the whole node runs.
            whole = WorkflowBuilder(orch)
            big = whole.add(h.add_one, {"x": 1}, cpu=NODE_CPUS)
            again = await run_workflow(orch, whole.workflow_id)
            assert again.status == "completed" and again.result(big)["out"] == 2

        engine.run(body)

    def test_cancelling_one_running_task_stops_it_and_skips_its_dependants(
        self, engine: Engine
    ) -> None:
        gate = engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            blocked = b.add(h.gated, {"gate": gate.port}, name="blocked")
            after = b.add(h.add_one, {"x": Ref(blocked)}, name="after")
            other = b.add(h.add_one, {"x": 1}, name="other")
            run_id = orch.run_workflow(b.workflow_id)
            await gate.arrived(1)

            assert orch.cancel_task(blocked, run_id) == run_id
            run = await wait_run(orch, run_id)

            assert run.task_status(blocked) == "cancelled"
            assert run.task_status(after) in ("skipped", "cancelled")
            assert run.result(other)["out"] == 2

        engine.run(body)


@pytest.fixture
def local_engine() -> Iterator[Engine]:
    eng = Engine(
        "local",
        LocalExecutor,
        owns_executor=True,
        local_resources=NodeResources(cpu_count=NODE_CPUS, memory_bytes=8 * h.GiB),
    )
    yield eng
    eng.close()


class TestLocalCancellation(CancelScenarios):
    @pytest.fixture
    def engine(self, local_engine: Engine) -> Engine:
        return local_engine

    def test_a_cooperative_task_sees_its_token_and_stops(self, engine: Engine) -> None:
        started, saw_cancel = engine.gate(), engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            task = b.add(cooperative, {"started": started.port, "saw_cancel": saw_cancel.port})
            run_id = orch.run_workflow(b.workflow_id)
            await started.arrived(1)

            orch.cancel_run(run_id)
            await saw_cancel.arrived(1)  # the task's code woke on its token and went on
            run = await wait_run(orch, run_id)

            assert run.status == "cancelled"
            assert run.task_status(task) == "cancelled"

        engine.run(body)

    def test_a_thread_task_is_reported_cancelled_at_once_and_its_late_result_discarded(
        self, engine: Engine
    ) -> None:
        gate, returned = engine.gate(), engine.gate()

        async def body(orch: Orchestrator) -> None:
            b = WorkflowBuilder(orch)
            task = b.add(stubborn, {"gate": gate.port, "returned": returned.port})
            run_id = orch.run_workflow(b.workflow_id)
            await gate.arrived(1)

            orch.cancel_run(run_id)
            run = await wait_run(orch, run_id)
            assert run.task_status(task) == "cancelled"

            await gate.open(1)
            await returned.arrived(1)  # the thread went on and returned its value
            # Another run through the same scheduler thread: the late outcome came before it.
            later = WorkflowBuilder(orch)
            later.add(h.add_one, {"x": 1})
            await run_workflow(orch, later.workflow_id)
            final = await wait_run(orch, run_id)
            assert final.of_type("finish_task") == []
            assert final.task_status(task) == "cancelled"

        engine.run(body)


@pytest.fixture
def ray_engine(ray_executor: RayExecutor) -> Iterator[Engine]:
    eng = Engine("ray", lambda: ray_executor, owns_executor=False)
    yield eng
    eng.close()


@pytest.mark.ray
class TestRayCancellation(CancelScenarios):
    @pytest.fixture
    def engine(self, ray_engine: Engine) -> Engine:
        return ray_engine
