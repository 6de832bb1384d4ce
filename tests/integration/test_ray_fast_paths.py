"""The Ray executor's fast paths, on a real local Ray (the session's ``ray_executor``).

* light tasks (cpu < 1) run on threads of one long-lived task host per node;
* large output values stay in Ray's object store between tasks and reach clients by reference
  (the client-level test runs against a local-executor head too, which keeps them likewise);
* the function's code goes through the object store once when it is large.

Task functions are defined inside the tests so cloudpickle ships them by value. Nothing sleeps
to wait: tasks block on loopback sockets the test controls, and the test blocks on handles.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from lattice.client.core.models import RunOutputs
from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.executor.base import TaskKind, TaskOutcome
from lattice.serialization import (
    REF_KEY,
    LargeValue,
    LargeValueLeaf,
    decode_value,
    encode_value,
    is_ref_leaf,
)
from lattice.vocabulary import TaskResourceRequirements
from tests.conftest import import_or_fail
from tests.integration import engine_helpers as h
from tests.integration.engine_helpers import Engine, WorkflowBuilder, run_workflow
from tests.integration.submissions import TIMEOUT, make_submission, run
from tests.integration.waiting_tasks import WAIT_OUTPUTS, Listener, extra_executor, wait_at

import_or_fail("ray", 'the Ray tests (pip install "ray[default]")')
from lattice.executor.large_values import LARGE_VALUE_BYTES  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.executor import RayExecutor  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.handles import Handle  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.payload import StoredValue  # noqa: E402 (after the check that Ray is there)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: float64 items of an array just over the large-value threshold
BIG_ITEMS = LARGE_VALUE_BYTES // 8 + 1024


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.close()


# --- light tasks on task hosts --------------------------------------------------------------


@pytest.mark.ray
def test_32_light_tasks_overlap_in_two_host_processes(
    ray_executor: RayExecutor, listener: Listener
) -> None:
    def llm_call(params: dict[str, Any]) -> dict[str, Any]:
        return wait_at(params["port"])

    handles = [
        ray_executor.submit(
            make_submission(
                llm_call, cpu=0.05, outputs=WAIT_OUTPUTS, user_inputs={"port": listener.port}
            )
        )
        for _ in range(32)
    ]
    # All 32 are waiting at the same time before any of them is let go.
    pids = listener.accept(32)
    listener.release_all()
    spans = [hd.result(TIMEOUT).value for hd in handles]

    assert max(s["start"] for s in spans) < min(s["end"] for s in spans)
    # 1.6 CPUs' worth: a shared host holds one CPU's worth (20 of them), the rest another.
    assert sorted(Counter(s["pid"] for s in spans).values()) == [12, 20]
    assert len(set(pids)) == 2
    assert len({(s["pid"], s["thread"]) for s in spans}) == 32
    assert spans[0]["pid"] != os.getpid()


@pytest.mark.ray
def test_cpu_bound_tasks_keep_a_process_each(ray_executor: RayExecutor, listener: Listener) -> None:
    def light(params: dict[str, Any]) -> dict[str, Any]:
        import os

        return {"out": os.getpid()}

    def heavy(params: dict[str, Any]) -> dict[str, Any]:
        return wait_at(params["port"])

    host_pid = run(ray_executor, make_submission(light, cpu=0.5)).value["out"]
    handles = [
        ray_executor.submit(
            make_submission(heavy, cpu=1, outputs=WAIT_OUTPUTS, user_inputs={"port": listener.port})
        )
        for _ in range(2)
    ]
    listener.accept(2)
    listener.release_all()
    pids = {hd.result(TIMEOUT).value["pid"] for hd in handles}

    assert len(pids) == 2 and host_pid not in pids


@pytest.mark.ray
def test_cancelled_light_task_is_interrupted_and_its_host_lives_on(
    ray_executor: RayExecutor, listener: Listener
) -> None:
    def spin(params: dict[str, Any]) -> dict[str, Any]:
        import os

        with socket.create_connection(("127.0.0.1", params["port"])) as conn:
            try:
                conn.sendall(f"{os.getpid()}\n".encode())
                while True:
                    pass
            finally:
                conn.sendall(b"cleanup")

    def where(params: dict[str, Any]) -> dict[str, Any]:
        import os

        return {"out": os.getpid()}

    handle = ray_executor.submit(
        make_submission(spin, cpu=0.2, user_inputs={"port": listener.port})
    )
    (pid,) = listener.accept(1)
    conn, _ = listener.waiting[0]

    assert ray_executor.cancel(handle)
    outcome = handle.result(TIMEOUT)
    assert conn.recv(7) == b"cleanup"  # its finally block ran: the thread was interrupted
    assert outcome.error is not None and outcome.error.type == "TaskCancelledError"
    assert not outcome.lost
    assert run(ray_executor, make_submission(where, cpu=0.2)).value == {"out": int(pid)}


@pytest.mark.ray
def test_light_task_blocked_in_c_is_reported_cancelled_after_the_grace(
    listener: Listener,
) -> None:
    def blocked(params: dict[str, Any]) -> dict[str, Any]:
        return wait_at(params["port"])

    # Another executor on the session's Ray connection: a short grace, its own task host.
    with extra_executor(cancel_grace=0.2) as executor:
        handle = executor.submit(
            make_submission(
                blocked, cpu=0.1, outputs=WAIT_OUTPUTS, user_inputs={"port": listener.port}
            )
        )
        delivered: list[TaskOutcome] = []
        handle.add_done_callback(delivered.append)
        listener.accept(1)

        assert executor.cancel(handle)
        outcome = handle.result(TIMEOUT)  # while the task still waits in recv()
        assert outcome.error is not None and outcome.error.type == "TaskCancelledError"
        assert delivered == [outcome]

        # The task ends later; its result is discarded, the handle reported exactly once.
        late = threading.Event()
        assert isinstance(handle, Handle)
        handle.on_ended(late.set)
        listener.release_all()
        assert late.wait(TIMEOUT)
        assert delivered == [outcome] and handle.result(0) is outcome


@pytest.mark.ray
def test_killed_host_loses_its_tasks_and_the_next_gets_a_new_host(
    ray_executor: RayExecutor, listener: Listener
) -> None:
    def blocked(params: dict[str, Any]) -> dict[str, Any]:
        return wait_at(params["port"])

    def where(params: dict[str, Any]) -> dict[str, Any]:
        import os

        return {"out": os.getpid()}

    handles = [
        ray_executor.submit(
            make_submission(
                blocked, cpu=0.1, outputs=WAIT_OUTPUTS, user_inputs={"port": listener.port}
            )
        )
        for _ in range(2)
    ]
    (host_pid,) = set(listener.accept(2))
    os.kill(int(host_pid), signal.SIGKILL)
    outcomes = [hd.result(TIMEOUT) for hd in handles]

    for outcome in outcomes:
        assert outcome.lost
        assert outcome.error is not None and outcome.error.type == "WorkerLostError"
        assert "task host" in outcome.error.message and "blocked" in outcome.error.message
    assert run(ray_executor, make_submission(where, cpu=0.1)).value["out"] != int(host_pid)


@pytest.fixture
def engine(ray_executor: RayExecutor) -> Iterator[Engine]:
    eng = Engine("ray", lambda: ray_executor, owns_executor=False)
    yield eng
    eng.close()


@pytest.mark.ray
def test_scheduler_dispatches_a_task_lost_with_its_host_again(
    engine: Engine, tmp_path: Path
) -> None:
    async def body(orch: Orchestrator) -> None:
        b = WorkflowBuilder(orch)
        task = b.add(h.crash_once, {"marker": str(tmp_path / "crashed")}, cpu=0.1)
        then = b.add(h.add_one, {"x": 41})

        run = await run_workflow(orch, b.workflow_id)

        assert run.status == "completed"
        first_pid, second_pid = run.result(task)["out"]
        assert first_pid != second_pid  # the second attempt ran on a new host
        assert run.result(then) == {"out": 42}
        assert len(run.of_type("task_exception")) == 0

    engine.run(body)


# --- large values stay in the object store --------------------------------------------------


@pytest.mark.ray
def test_large_output_goes_to_its_dependant_from_the_object_store(
    ray_executor: RayExecutor,
) -> None:
    def make(params: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        return {"array": np.arange(params["n"], dtype="float64"), "label": "small"}

    def consume(params: dict[str, Any]) -> dict[str, Any]:
        array = params["array"]
        return {"out": (type(array).__name__, float(array.sum()), array.flags.writeable)}

    n = BIG_ITEMS
    for cpu in (0.1, 1):  # on a task host, and as a process of its own
        made = run(
            ray_executor,
            make_submission(make, cpu=cpu, outputs=("array", "label"), user_inputs={"n": n}),
        )
        assert made.ok, made.error
        stored = made.value["array"]
        assert isinstance(stored, StoredValue) and made.value["label"] == "small"
        assert stored.load().shape == (n,)

        used = run(
            ray_executor, make_submission(consume, cpu=cpu, upstream_inputs={"array": stored})
        )
        assert used.ok, used.error
        # A read-only view: Ray mapped it from the object store instead of copying it.
        assert used.value == {"out": ("ndarray", float(n * (n - 1) / 2), False)}

        wire = encode_value(made.value)
        assert wire["label"] == "small"
        assert is_ref_leaf(wire["array"]) and isinstance(wire["array"], LargeValueLeaf)
        assert wire["array"][REF_KEY] == {"bytes": n * 8, "type": "numpy.ndarray"}


@pytest.mark.ray
def test_large_outputs_of_a_batch_reach_each_dependant(ray_executor: RayExecutor) -> None:
    def make_all(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"out": bytes([p["b"]]) * p["size"]} for p in batch]

    def first_byte(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": (params["blob"][0], len(params["blob"]))}

    size = LARGE_VALUE_BYTES + 1
    made = run(
        ray_executor,
        make_submission(
            make_all,
            cpu=0.5,
            kind=TaskKind.BATCH,
            user_inputs=[{"b": 7, "size": size}, {"b": 9, "size": 10}],
            upstream_inputs=[{}, {}],
        ),
    )
    assert made.ok, made.error
    big, small = made.value[0]["out"], made.value[1]["out"]
    assert isinstance(big, StoredValue) and big.path == (0, "out")
    assert small == bytes([9]) * 10

    used = run(ray_executor, make_submission(first_byte, cpu=0.5, upstream_inputs={"blob": big}))
    assert used.value == {"out": (7, size)}


@pytest.mark.ray
def test_a_large_function_runs_on_hosts_and_in_processes(ray_executor: RayExecutor) -> None:
    # Its code is put in the object store once and passed by reference (CODE_INLINE_BYTES).
    ballast = os.urandom(300 * 1024)  # the function's pickle carries it

    def heavy_code(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": (len(ballast), params["i"])}

    first = make_submission(heavy_code, cpu=0.5, user_inputs={"i": 1})
    assert len(first.code) > 300 * 1024
    outcomes = [
        run(ray_executor, replace(first, task_key=f"code{i}", user_inputs={"i": i}))
        for i in range(3)
    ]
    light = run(
        ray_executor,
        replace(first, task_key="code-proc", requirements=TaskResourceRequirements(cpu=1)),
    )

    assert [o.value for o in outcomes] == [{"out": (300 * 1024, i)} for i in range(3)]
    assert light.value == {"out": (300 * 1024, 1)}


# --- the wire form of large values (no Ray needed) --------------------------------------------


class _Held(LargeValue):
    def __init__(self, value: Any) -> None:
        self.value = value

    def load(self) -> Any:
        return self.value

    def describe(self) -> dict[str, Any]:
        return {"bytes": len(self.value), "type": "builtins.bytes"}


def test_a_large_value_is_written_as_a_reference_leaf() -> None:
    held = _Held(b"x" * 10)
    wire = encode_value({"big": held, "n": 1})

    assert wire == {"big": {REF_KEY: {"bytes": 10, "type": "builtins.bytes"}}, "n": 1}
    assert wire["big"].large is held
    assert decode_value(wire)["big"] == {REF_KEY: {"bytes": 10, "type": "builtins.bytes"}}


def test_a_users_dict_that_looks_like_a_reference_round_trips() -> None:
    mimic = {REF_KEY: {"bytes": 1}}
    wire = encode_value({"out": mimic})

    assert not is_ref_leaf(wire["out"])
    assert decode_value(wire) == {"out": mimic}


def test_run_outputs_fetch_a_tasks_large_values_when_it_is_read() -> None:
    fetched: list[str] = []

    def resolve(task_id: str, outputs: dict[str, Any]) -> dict[str, Any]:
        fetched.append(task_id)
        return {k: f"value of {task_id}.{k}" if is_ref_leaf(v) else v for k, v in outputs.items()}

    outputs = RunOutputs(resolve)
    outputs["a"] = {"array": {REF_KEY: {"bytes": 5, "type": "x"}}, "n": 1}
    outputs["b"] = {"total": 3}

    assert outputs["b"] == {"total": 3} and fetched == []
    assert outputs["a"] == {"array": "value of a.array", "n": 1}
    assert outputs["a"]["array"] == "value of a.array" and fetched == ["a"]  # fetched once
    outputs["c"] = {"x": {REF_KEY: {"bytes": 1, "type": "x"}}}
    assert dict(outputs.items())["c"] == {"x": "value of c.x"} and fetched == ["a", "c"]


# --- through a real head and the client ---------------------------------------------------


@pytest.mark.parametrize("head_fixture", ["ray_head", "local_head"])
def test_client_reads_a_large_value_only_when_it_asks_for_it(
    head_fixture: str, request: pytest.FixtureRequest
) -> None:
    """Both executors keep a large output where it was made; the client fetches it by
    reference when it reads it."""
    import httpx

    from lattice import LatticeClient, task

    @task(inputs=["n"], outputs=["array"])
    def make(params: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        return {"array": np.ones(params["n"])}

    @task(inputs=["array"], outputs=["total"], resources={"cpu": 0.2})
    def total(params: dict[str, Any]) -> dict[str, Any]:
        return {"total": float(params["array"].sum())}

    head = request.getfixturevalue(head_fixture)
    with LatticeClient(head.url, timeout=TIMEOUT) as client:
        wf = client.create_workflow()
        a = wf.add_task(make, inputs={"n": BIG_ITEMS})
        b = wf.add_task(total, inputs={"array": a.outputs["array"]})
        run_id = wf.run()
        outputs = wf.get_outputs(run_id, timeout=TIMEOUT)

        assert outputs[b]["total"] == float(BIG_ITEMS)
        wire = client.run_status(run_id)["tasks"][a.task_id]["result"]["array"]
        assert wire == {REF_KEY: {"bytes": BIG_ITEMS * 8, "type": "numpy.ndarray"}}
        array = outputs[a]["array"]  # fetched now
        assert array.shape == (BIG_ITEMS,) and float(array.sum()) == float(BIG_ITEMS)

        streamed = [m for m in wf.stream(run_id, timeout=TIMEOUT) if m["type"] == "finish_task"]
        by_task = {m["data"]["task_id"]: m["data"]["result"] for m in streamed}
        assert by_task[a.task_id]["array"].shape == (BIG_ITEMS,)

        url = f"{head.url}/runs/{run_id}/results/{a.task_id}/array"
        as_json = httpx.get(url, timeout=TIMEOUT).json()
        assert as_json["status"] == "success"
        assert decode_value(as_json["value"]).shape == (BIG_ITEMS,)
        assert httpx.get(f"{url[:-5]}nope", timeout=TIMEOUT).status_code == 404
        small = httpx.get(f"{head.url}/runs/{run_id}/results/{b.task_id}/total?format=pickle")
        assert small.status_code == 400

        assert httpx.delete(f"{head.url}/runs/{run_id}", timeout=TIMEOUT).status_code == 200
        assert httpx.get(url, timeout=TIMEOUT).status_code == 404
