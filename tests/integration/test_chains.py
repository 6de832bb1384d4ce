"""Chains: a task that continues a chain is handed to the executor before its upstream ends.

The scheduler submits such a follower with a pending output as its input (on Ray, the
upstream's outcome ref), so it starts without a round trip through the scheduler. These tests
check, on both executors, that it really goes out ahead, and that nothing changes for the run
when the upstream fails, is cancelled or (on Ray) is lost: the follower's code never runs on a
failed upstream's output, a cancelled run leaves nothing running and no resources held, and a
lost upstream's follower waits for the new attempt.

The executor is a real one (a fresh local executor, or the session's Ray executor) behind a
proxy that records each submission: the proxy only watches.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import pytest

from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.core.resource.node import NodeResources
from lattice.executor.base import ExecutorBackend, TaskHandle, TaskOutcome, TaskSubmission
from lattice.executor.local_executor import CANCELLED, LocalExecutor
from lattice.serialization import decode_value
from tests.integration import engine_helpers as h
from tests.integration.engine_helpers import (
    NODE_CPUS,
    Engine,
    Ref,
    WorkflowBuilder,
    run_workflow,
    wait_run,
)

if TYPE_CHECKING:
    from lattice.executor.ray.executor import RayExecutor

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Recording(ExecutorBackend):
    """An executor, with every submission recorded as ``(task name, handle)``."""

    pipelines = True

    def __init__(self, inner: ExecutorBackend, owns: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self._owns = owns
        self.submitted: queue.SimpleQueue[tuple[str, TaskHandle]] = queue.SimpleQueue()

    def initialize(self) -> None:
        self.inner.initialize()

    def cluster_nodes(self) -> list[dict[str, Any]]:
        return self.inner.cluster_nodes()

    def alive_node_ids(self) -> set[str] | None:
        return self.inner.alive_node_ids()

    def on_nodes_changed(self, callback: Callable[[], None]) -> None:
        self.inner.on_nodes_changed(callback)

    def release_node(self, node_id: str) -> None:
        self.inner.release_node(node_id)

    def submit(self, submission: TaskSubmission) -> TaskHandle:
        handle = self.inner.submit(submission)
        self.submitted.put((submission.task_name, handle))
        return handle

    def cancel(self, handle: TaskHandle) -> bool:
        return self.inner.cancel(handle)

    def shutdown(self) -> None:
        if self._owns:  # the session's Ray executor outlives this test
            self.inner.shutdown()

    def next_submissions(self, count: int) -> dict[str, TaskHandle]:
        """Block until ``count`` more submissions were made; name -> handle."""
        return dict(self.submitted.get(timeout=h.WAIT) for _ in range(count))


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def recording(request: pytest.FixtureRequest) -> Recording:
    if request.param == "local":
        return Recording(LocalExecutor(), owns=True)
    ray_executor: RayExecutor = request.getfixturevalue("ray_executor")
    return Recording(ray_executor, owns=False)


@pytest.fixture
def engine(recording: Recording) -> Iterator[Engine]:
    eng = Engine(
        recording.name,
        lambda: recording,
        owns_executor=True,
        local_resources=NodeResources(cpu_count=NODE_CPUS, memory_bytes=8 * h.GiB),
    )
    yield eng
    eng.close()


@pytest.fixture
def ray_engine(ray_executor: RayExecutor) -> Iterator[Engine]:
    eng = Engine("ray", lambda: ray_executor, owns_executor=False)
    yield eng
    eng.close()


def touch(p: dict[str, Any]) -> dict[str, Any]:
    """Leaves a file behind: the proof that its code ran."""
    Path(p["marker"]).write_text("ran")
    return {"out": p["x"]}


def identity(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": p["x"]}


async def start_gated_chain(
    orch: Orchestrator, gate: h.Gate, recording: Recording, extra: dict[str, float] | None = None
) -> tuple[str, list[str], dict[str, TaskHandle]]:
    """Start a run of first (waits at ``gate``) -> second -> third, all alike, plus ``extra``
    tasks (name -> the CPU it asks for) that read second too; return the run id, the three
    task ids, and the handles of the three once all were submitted (``first`` still at the
    gate)."""
    b = WorkflowBuilder(orch)
    first = b.add(h.gated, {"gate": gate.port}, name="first")
    second = b.add(identity, {"x": Ref(first)}, name="second")
    third = b.add(identity, {"x": Ref(second)}, name="third")
    for name, cpu in (extra or {}).items():
        b.add(identity, {"x": Ref(second)}, cpu=cpu, name=name)
    run_id = orch.run_workflow(b.workflow_id)
    await gate.arrived(1)
    return run_id, [first, second, third], recording.next_submissions(3)


def test_a_chain_goes_out_whole_while_its_first_task_still_runs(
    engine: Engine, recording: Recording
) -> None:
    gate = engine.gate()

    async def body(orch: Orchestrator) -> None:
        # "other" asks for more: it does not continue the chain, it waits as usual.
        run_id, (first, second, third), submitted = await start_gated_chain(
            orch, gate, recording, {"other": 1}
        )

        assert set(submitted) == {"first", "second", "third"}
        assert not any(handle.done() for handle in submitted.values())
        await gate.open(1)
        run = await wait_run(orch, run_id)

        assert run.status == "completed"
        token = run.result(first)["out"]
        followers = [m for m in run.of_type("finish_task") if m["data"]["task_id"] != first]
        assert len(followers) == 3
        for message in followers:
            assert decode_value(message["data"]["result"]) == {"out": token}
        # The run hears of each follower when its upstream finished, in that order.
        for upstream, follower in ((first, second), (second, third)):
            assert run.seq("finish_task", upstream) < run.seq("start_task", follower)
        assert len(run.of_type("start_task")) == 4

    engine.run(body)


def test_a_follower_of_a_failed_task_never_runs_its_code(
    engine: Engine, recording: Recording, tmp_path: Path
) -> None:
    marker = tmp_path / "follower-ran"

    async def body(orch: Orchestrator) -> None:
        b = WorkflowBuilder(orch)
        bad = b.add(h.fail, {"x": 3}, name="bad")
        follower = b.add(touch, {"x": Ref(bad), "marker": str(marker)}, name="follower")

        run = await run_workflow(orch, b.workflow_id)
        handles = recording.next_submissions(2)

        assert run.status == "failed"
        assert run.task_status(follower) == "skipped"
        assert [m["data"]["task_id"] for m in run.of_type("start_task")] == [bad]
        # It was handed over ahead: the executor refused it the failed input (or the
        # scheduler's cancellation reached it first). Either way its code did not run.
        outcome: TaskOutcome = handles["follower"].result(h.WAIT)
        assert outcome.error is not None
        assert outcome.error.type in ("UpstreamFailed", "TaskCancelledError")
        assert not marker.exists()

    engine.run(body)


def test_cancelling_a_run_takes_back_its_chain_and_frees_everything(
    engine: Engine, recording: Recording
) -> None:
    gate = engine.gate()

    async def body(orch: Orchestrator) -> None:
        run_id, tasks, handles = await start_gated_chain(orch, gate, recording)

        orch.cancel_run(run_id)
        # The follower never ran: the scheduler withdrew it, or (local executor, where a
        # running task is reported cancelled at once) `first`'s cancel reached it first as an
        # upstream without output.
        withdrawn = handles["second"].result(h.WAIT).error
        assert withdrawn is not None and withdrawn.type in (CANCELLED.type, "UpstreamFailed")
        await gate.open(1)
        run = await wait_run(orch, run_id)

        assert run.status == "cancelled"
        for task in tasks:
            assert run.task_status(task) == "cancelled"
        assert run.of_type("finish_task") == []
        assert not handles["third"].result(h.WAIT).ok
        # Nothing of the chain holds resources: a task asking for the whole node runs.
        whole = WorkflowBuilder(orch)
        big = whole.add(h.add_one, {"x": 1}, cpu=NODE_CPUS)
        after = await run_workflow(orch, whole.workflow_id)
        assert after.status == "completed" and after.result(big) == {"out": 2}

    engine.run(body)


@pytest.mark.ray
def test_a_follower_of_a_lost_task_waits_for_its_next_attempt(
    ray_engine: Engine, tmp_path: Path
) -> None:
    """Ray only: the task kills its process, which on the local executor is the head."""

    async def body(orch: Orchestrator) -> None:
        b = WorkflowBuilder(orch)
        lost = b.add(h.crash_once, {"marker": str(tmp_path / "crashed")}, name="lost")
        follower = b.add(identity, {"x": Ref(lost)}, name="follower")

        run = await run_workflow(orch, b.workflow_id)

        assert run.status == "completed"
        assert run.result(follower) == run.result(lost)
        starts = [m["data"] for m in run.of_type("start_task")]
        assert [s["task_id"] for s in starts] == [lost, lost, follower]
        assert starts[1]["attempt"] == 2

    ray_engine.run(body)
