"""RayExecutor against a real local Ray (the session's ``ray_executor``), no mocks.

Task functions are defined inside the tests so cloudpickle ships them by value, as it does
for a client's code. Nothing sleeps to wait: tests block on handles, events and sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from lattice.core.resource.node import SelectedNode
from lattice.exceptions import LatticeInputError, LatticeUsageError
from lattice.executor.base import TaskKind, TaskOutcome
from lattice.executor.factory import ExecutorType, create_executor
from lattice.executor.local_executor import LocalExecutor
from tests.conftest import import_or_fail
from tests.integration.submissions import TIMEOUT, make_submission, run
from tests.integration.waiting_tasks import extra_executor

import_or_fail("ray", 'the Ray tests (pip install "ray[default]")')
from lattice.executor.ray.executor import RayExecutor  # noqa: E402 (after the check that Ray is there)

# --- results --------------------------------------------------------------------------------


@pytest.mark.ray
def test_code_task_returns_its_outputs(ray_executor: RayExecutor) -> None:
    def add(params: dict[str, Any]) -> dict[str, Any]:
        return {"sum": params["a"] + params["b"]}

    outcome = run(
        ray_executor,
        make_submission(add, outputs=("sum",), user_inputs={"a": 1}, upstream_inputs={"b": 2}),
    )

    assert outcome.ok and not outcome.lost
    assert outcome.value == {"sum": 3}
    assert outcome.duration > 0


@pytest.mark.ray
def test_failing_task_reports_type_message_and_traceback(ray_executor: RayExecutor) -> None:
    def exploding_task(params: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("bad input 42")

    outcome = run(ray_executor, make_submission(exploding_task))

    assert outcome.error is not None and not outcome.lost
    assert outcome.error.type == "ValueError"
    assert "bad input 42" in outcome.error.message
    assert "exploding_task" in outcome.error.traceback


@pytest.mark.ray
def test_batch_task_returns_one_result_per_input(ray_executor: RayExecutor) -> None:
    def double_all(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"out": p["x"] * 2 + p["y"]} for p in batch]

    outcome = run(
        ray_executor,
        make_submission(
            double_all,
            kind=TaskKind.BATCH,
            user_inputs=[{"x": 1}, {"x": 2}],
            upstream_inputs=[{"y": 10}, {"y": 20}],
        ),
    )

    assert outcome.ok, outcome.error
    assert outcome.value == [{"out": 12}, {"out": 24}]


@pytest.mark.ray
def test_langgraph_task_gets_pickled_args_and_kwargs(ray_executor: RayExecutor) -> None:
    def node_fn(state: dict[str, int], step: int, *, scale: int) -> tuple[int, str]:
        return state["n"] * scale + step, "done"

    outcome = run(
        ray_executor,
        make_submission(
            node_fn,
            kind=TaskKind.LANGGRAPH,
            outputs=(),
            args=cloudpickle.dumps(({"n": 4}, 1)),
            kwargs=cloudpickle.dumps({"scale": 10}),
        ),
    )

    assert outcome.ok, outcome.error
    assert outcome.value == (41, "done")


@pytest.mark.ray
def test_upstream_object_refs_reach_the_task_as_values(ray_executor: RayExecutor) -> None:
    import ray

    def describe(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": (type(params["data"]).__name__, params["data"], params["plain"])}

    ref = ray.put({"rows": [1, 2, 3]})
    outcome = run(
        ray_executor, make_submission(describe, upstream_inputs={"data": ref, "plain": 5})
    )

    assert outcome.ok, outcome.error
    assert outcome.value == {"out": ("dict", {"rows": [1, 2, 3]}, 5)}


@pytest.mark.ray
def test_upstream_object_refs_in_a_batch(ray_executor: RayExecutor) -> None:
    import ray

    def total(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"out": p["a"] + p["b"]} for p in batch]

    first, second = ray.put(1), ray.put(100)
    outcome = run(
        ray_executor,
        make_submission(
            total,
            kind=TaskKind.BATCH,
            user_inputs=[{}, {}],
            upstream_inputs=[{"a": first, "b": 2}, {"a": second, "b": second}],
        ),
    )

    assert outcome.ok, outcome.error
    assert outcome.value == [{"out": 3}, {"out": 200}]


# --- concurrency, cancellation, callbacks ---------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket a task connects to, to tell the test that it is running."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        yield server


def port_of(server: socket.socket) -> int:
    return int(server.getsockname()[1])


@pytest.mark.ray
def test_fractional_cpu_tasks_overlap_beyond_the_core_count(
    ray_executor: RayExecutor, listener: socket.socket
) -> None:
    # Six tasks of 0.1 CPU on a 4-CPU node. Each waits at a gate that opens only once all six
    # are running: were any of them queued behind another, the gate would time out. (A fixed
    # sleep cannot show this: Ray starts a worker process per concurrent task, ~1s each here.)
    def gated(params: dict[str, Any]) -> dict[str, float]:
        import socket
        import time

        start = time.time()
        with socket.create_connection(("127.0.0.1", params["port"])) as gate:
            gate.recv(2)
        return {"start": start, "end": time.time()}

    count, port = 6, port_of(listener)
    handles = [
        ray_executor.submit(
            make_submission(gated, outputs=("start", "end"), cpu=0.1, user_inputs={"port": port})
        )
        for _ in range(count)
    ]
    waiting = [listener.accept()[0] for _ in range(count)]
    for conn in waiting:
        conn.sendall(b"go")
        conn.close()
    spans = [h.result(TIMEOUT).value for h in handles]

    assert max(s["start"] for s in spans) < min(s["end"] for s in spans)


@pytest.mark.ray
def test_cancel_running_task_yields_cancelled_outcome(
    ray_executor: RayExecutor, listener: socket.socket
) -> None:
    def wait_forever(params: dict[str, Any]) -> dict[str, Any]:
        import socket
        import time

        with socket.create_connection(("127.0.0.1", params["port"])) as conn:
            conn.sendall(b"running")
        time.sleep(3600)  # blocked in C: only killing the worker stops it
        return {"out": "not cancelled"}

    handle = ray_executor.submit(
        make_submission(wait_forever, user_inputs={"port": port_of(listener)})
    )
    delivered: list[TaskOutcome] = []
    fired = threading.Event()

    def on_done(outcome: TaskOutcome) -> None:
        delivered.append(outcome)
        fired.set()

    handle.add_done_callback(on_done)
    conn, _ = listener.accept()
    conn.close()

    assert ray_executor.cancel(handle) is True
    assert fired.wait(TIMEOUT)
    outcome = handle.result(0)
    assert outcome.error is not None and outcome.error.type == "TaskCancelledError"
    assert not outcome.lost
    assert delivered == [outcome]
    assert ray_executor.cancel(handle) is False  # already over


@pytest.mark.ray
def test_cancel_interrupts_python_code_so_its_cleanup_runs(
    ray_executor: RayExecutor, listener: socket.socket
) -> None:
    def spin(params: dict[str, Any]) -> dict[str, Any]:
        import socket

        with socket.create_connection(("127.0.0.1", params["port"])) as conn:
            try:
                conn.sendall(b"running")
                while True:
                    pass
            finally:
                conn.sendall(b"cleanup")

    # A grace longer than the test: only the gentle interrupt may end this task.
    with extra_executor(cancel_grace=10 * TIMEOUT) as patient:
        handle = patient.submit(make_submission(spin, user_inputs={"port": port_of(listener)}))
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            assert conn.recv(7) == b"running"
            assert patient.cancel(handle)
            outcome = handle.result(TIMEOUT)
            assert conn.recv(7) == b"cleanup"

    assert outcome.error is not None and outcome.error.type == "TaskCancelledError"


@pytest.mark.ray
def test_done_callback_fires_exactly_once(ray_executor: RayExecutor) -> None:
    def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": "ok"}

    handle = ray_executor.submit(make_submission(quick))
    calls: list[TaskOutcome] = []
    later = threading.Event()
    handle.add_done_callback(calls.append)
    # Callbacks run in registration order, so when this one fires the first has run.
    handle.add_done_callback(lambda _outcome: later.set())
    assert later.wait(TIMEOUT)
    assert handle.done()

    after: list[TaskOutcome] = []
    handle.add_done_callback(after.append)  # registered after completion: fires at once

    assert len(calls) == 1 and calls[0].value == {"out": "ok"}
    assert after == calls
    assert handle.result(0) is calls[0]


@pytest.mark.ray
def test_wait_splits_done_and_pending(ray_executor: RayExecutor) -> None:
    def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": 1}

    handle = ray_executor.submit(make_submission(quick))
    done, pending = ray_executor.wait([handle], TIMEOUT)

    assert done == [handle] and pending == []
    assert ray_executor.get_result(handle).value == {"out": 1}


# --- placement and GPUs ---------------------------------------------------------------------


@pytest.mark.ray
def test_gpu_ids_become_cuda_visible_devices_in_a_fresh_worker(ray_executor: RayExecutor) -> None:
    def report_gpus(params: dict[str, Any]) -> dict[str, Any]:
        import os

        return {"out": (os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid())}

    first = run(
        ray_executor,
        make_submission(report_gpus, node=SelectedNode("local", "127.0.0.1", gpu_ids=(2, 3))),
    )
    second = run(
        ray_executor,
        make_submission(report_gpus, node=SelectedNode("local", "127.0.0.1", gpu_ids=(1,))),
    )

    assert first.ok and second.ok, (first.error, second.error)
    assert first.value["out"][0] == "2,3"
    assert second.value["out"][0] == "1"
    # CUDA reads the variable once per process: each GPU task gets a worker of its own.
    assert first.value["out"][1] != second.value["out"][1]


@pytest.mark.ray
def test_task_for_a_ray_node_runs_on_that_node(ray_executor: RayExecutor) -> None:
    def where_am_i(params: dict[str, Any]) -> dict[str, Any]:
        import ray

        return {"out": ray.get_runtime_context().get_node_id()}

    (node_id,) = ray_executor.alive_node_ids()
    outcome = run(ray_executor, make_submission(where_am_i, node=SelectedNode(node_id, "x")))

    assert outcome.value == {"out": node_id}
    assert [n["NodeID"] for n in ray_executor.cluster_nodes() if n["Alive"]] == [node_id]


@pytest.mark.ray
def test_task_pinned_to_a_dead_node_is_lost(ray_executor: RayExecutor) -> None:
    def unreachable(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": "ran"}

    gone = "ab" * 28  # a well-formed Ray node id no node has
    outcome = run(ray_executor, make_submission(unreachable, node=SelectedNode(gone, "10.9.9.9")))

    assert outcome.lost
    assert outcome.error is not None and outcome.error.type == "WorkerLostError"
    assert gone in outcome.error.message and "TaskUnschedulableError" in outcome.error.message


@pytest.mark.ray
def test_worker_crash_is_lost_not_failed(ray_executor: RayExecutor) -> None:
    def crash(params: dict[str, Any]) -> dict[str, Any]:
        import os

        os._exit(3)

    outcome = run(ray_executor, make_submission(crash))

    assert outcome.lost
    assert outcome.error is not None and outcome.error.type == "WorkerLostError"
    assert "WorkerCrashedError" in outcome.error.message
    assert "crash" in outcome.error.message and "'local'" in outcome.error.message


@pytest.mark.ray
def test_sandboxed_task_runs_in_an_isolated_child_of_the_worker(
    ray_executor: RayExecutor,
) -> None:
    from lattice.executor.sandbox.runner import SandboxRunner
    from lattice.vocabulary import SandboxLevel, SandboxSpec

    def whereabouts(params: dict[str, Any]) -> dict[str, Any]:
        import os

        return {"out": os.environ.get("HOME", "")}

    executor = RayExecutor(sandbox=SandboxRunner(SandboxSpec(level=SandboxLevel.NONE)))
    executor.initialize()
    try:
        isolated = run(
            executor,
            replace(
                make_submission(whereabouts), sandbox=SandboxSpec(level=SandboxLevel.SUBPROCESS)
            ),
        )
        in_worker = run(executor, make_submission(whereabouts))
    finally:
        executor.shutdown()

    assert isolated.ok and in_worker.ok, (isolated.error, in_worker.error)
    assert "lattice-task-" in isolated.value["out"]  # the sandbox's private HOME
    assert in_worker.value["out"] == os.environ.get("HOME", "")


# --- lifecycle and membership ---------------------------------------------------------------


@pytest.fixture
def second_executor(ray_executor: RayExecutor) -> Iterator[RayExecutor]:
    """Another executor in this process: it uses the session's Ray connection, not owns it."""
    executor = RayExecutor()
    executor.initialize()
    try:
        yield executor
    finally:
        executor.shutdown()


@pytest.mark.ray
def test_shutdown_keeps_a_connection_the_executor_did_not_make(
    ray_executor: RayExecutor, second_executor: RayExecutor
) -> None:
    import ray

    def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": "still here"}

    second_executor.shutdown()

    assert ray.is_initialized()
    assert run(ray_executor, make_submission(quick)).value == {"out": "still here"}


@pytest.mark.ray
def test_nodes_changed_fires_when_a_node_joins_and_leaves(
    second_executor: RayExecutor, tmp_path: Path
) -> None:
    import ray

    changed = threading.Event()
    second_executor.on_nodes_changed(changed.set)
    before = second_executor.alive_node_ids()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1"]
    command += [f"--address={ray.get_runtime_context().gcs_address}", "--disable-usage-stats"]
    command += ["--object-store-memory=100000000"]
    log = (tmp_path / "worker-node.log").open("w")
    worker = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert changed.wait(TIMEOUT), (tmp_path / "worker-node.log").read_text()
        joined = second_executor.alive_node_ids() - before
        assert len(joined) == 1

        changed.clear()
        worker.send_signal(signal.SIGTERM)
        worker.wait(TIMEOUT)
        assert changed.wait(TIMEOUT)
        assert second_executor.alive_node_ids() == before
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()


_HEAD_SCRIPT = textwrap.dedent(
    """
    import json, socket, subprocess, sys, threading

    import cloudpickle

    from lattice.core.resource.node import SelectedNode
    from lattice.vocabulary import TaskResourceRequirements
    from lattice.executor.base import TaskKind, TaskSubmission
    from lattice.executor.ray.executor import RayExecutor

    def where(params):
        import ray

        return {"out": ray.get_runtime_context().get_node_id()}

    port = int(sys.argv[1])
    executor = RayExecutor(ray_port=port, num_cpus=1)
    executor.initialize()
    (head_id,) = executor.alive_node_ids()
    joined = threading.Event()
    executor.on_nodes_changed(joined.set)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1",
         f"--address=127.0.0.1:{port}", "--object-store-memory=100000000",
         "--disable-usage-stats"],
        stdout=sys.stderr.fileno(), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        assert joined.wait(60), "the worker node did not join"
        (worker_id,) = executor.alive_node_ids() - {head_id}
        ran_on = {}
        for node_id in (head_id, worker_id):
            sub = TaskSubmission(
                task_key=node_id, task_name="where", kind=TaskKind.CODE,
                code=cloudpickle.dumps(where), requirements=TaskResourceRequirements(cpu=1),
                node=SelectedNode(node_id, "127.0.0.1"), outputs=("out",),
            )
            ran_on[node_id] = executor.submit(sub).result(60).value["out"]
    finally:
        worker.terminate()
        worker.wait(60)
    executor.shutdown()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        head_stopped = False
    except ConnectionRefusedError:
        head_stopped = True
    pinned = len(ran_on) == 2 and all(k == v for k, v in ran_on.items())
    print(json.dumps({"pinned": pinned, "head_stopped": head_stopped}))
    """
)


@pytest.mark.ray
def test_head_mode_takes_worker_nodes_and_stops_only_its_own_head(
    ray_executor: RayExecutor,
) -> None:
    def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": "alive"}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # Its own process: Ray allows one connection per process, and this one has the session's.
    done = subprocess.run(
        [sys.executable, "-c", _HEAD_SCRIPT, str(port)],
        capture_output=True,
        text=True,
        timeout=240,
    )

    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert done.stdout.strip().splitlines()[-1] == '{"pinned": true, "head_stopped": true}', report
    assert run(ray_executor, make_submission(quick)).value == {"out": "alive"}


# --- usage errors and the factory -----------------------------------------------------------


def test_submit_before_initialize_is_a_usage_error() -> None:
    def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": 1}

    with pytest.raises(LatticeUsageError, match="initialize"):
        RayExecutor().submit(make_submission(quick))


def test_address_and_ray_port_are_exclusive() -> None:
    with pytest.raises(LatticeUsageError, match="not both"):
        RayExecutor(address="127.0.0.1:6379", ray_port=6380)


def test_fractional_num_cpus_is_rejected() -> None:
    with pytest.raises(LatticeInputError, match="whole number"):
        RayExecutor(num_cpus=1.5)


def test_factory_builds_each_executor_type() -> None:
    assert isinstance(create_executor("local"), LocalExecutor)
    assert isinstance(create_executor(ExecutorType.RAY, num_cpus=2), RayExecutor)
    with pytest.raises(LatticeInputError, match="allowed: ray, local"):
        create_executor("kubernetes")
    with pytest.raises(LatticeUsageError, match="only apply to the Ray executor"):
        create_executor(ExecutorType.LOCAL, ray_port=6379)
