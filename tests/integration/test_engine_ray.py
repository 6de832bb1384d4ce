"""The engine end to end on a real local Ray (the session's ``ray_executor``, 4 CPUs).

Runs every scenario of :class:`EngineScenarios`; each test gets a fresh Orchestrator (and
scheduler thread) on the shared executor, and stops only that scheduler afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import cloudpickle
import pytest

from lattice.core.orchestrator.orchestrator import Orchestrator
from tests.integration import engine_helpers as h
from tests.integration.engine_helpers import Engine, WorkflowBuilder, run_workflow
from tests.integration.test_engine_local import EngineScenarios

if TYPE_CHECKING:
    from lattice.executor.ray.executor import RayExecutor

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def engine(ray_executor: RayExecutor) -> Iterator[Engine]:
    eng = Engine("ray", lambda: ray_executor, owns_executor=False)
    yield eng
    eng.close()


@pytest.mark.ray
class TestRayEngine(EngineScenarios):
    """The scenarios on Ray, plus placement on the Ray node itself."""

    def test_the_resource_manager_is_built_from_the_ray_node_and_pins_tasks_to_it(
        self, engine: Engine, ray_executor: RayExecutor
    ) -> None:
        (ray_node,) = [n for n in ray_executor.cluster_nodes() if n["Alive"]]

        async def body(orch: Orchestrator) -> None:
            (node,) = orch.nodes()
            assert node["node_id"] == ray_node["NodeID"]
            assert node["total"]["cpu"] == h.NODE_CPUS

            b = WorkflowBuilder(orch)
            task = b.add(h.add_one, {"x": 1})
            run = await run_workflow(orch, b.workflow_id)

            assert run.status == "completed"
            assert run.event("start_task", task)["data"]["node_id"] == ray_node["NodeID"]

        engine.run(body)
