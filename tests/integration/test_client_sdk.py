"""The Python SDK (``from lattice import LatticeClient, task``) against a real in-process server."""

from __future__ import annotations

import importlib.util
import socket
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import lattice
from lattice import (
    InvalidResourceError,
    LatticeClient,
    LatticeConnectionError,
    LatticeInputError,
    LatticeTimeoutError,
    LatticeUsageError,
    LatticeWorkflow,
    NotFoundError,
    RunCancelledError,
    TaskFailedError,
    task,
)
from lattice.client.core import workflow as workflow_module
from lattice.client.core.transport import Transport
from tests.integration.server_fixture import REPO_ROOT, Gate, InProcessServer, free_port

WAIT = 15.0


def pass_gate(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.settimeout(30)
        if conn.recv(2) != b"go":
            raise RuntimeError("the gate was closed")


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def square(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] * params["x"]}


@task(inputs=["y", "tag"], outputs=["z", "tag"], resources={"cpu": 0.1})
def plus_one_tagged(params: dict[str, Any]) -> dict[str, Any]:
    return {"z": params["y"] + 1, "tag": params["tag"]}


@task(inputs=["z", "tag"], outputs=["label"], resources={"cpu": 0.1})
def label(params: dict[str, Any]) -> str:
    return f"{params['tag']}={params['z']}"


@task(inputs=["x"], outputs=["y"])
def explode(params: dict[str, int]) -> dict[str, int]:
    raise ZeroDivisionError(f"divided {params['x']} by nothing")


@task(inputs=["gate"], outputs=["y"])
def gated(params: dict[str, int]) -> int:
    pass_gate(params["gate"])
    return 1


@task(outputs=["s", "b", "a", "t", "keys", "deep"])
def odd_values(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "s": {1, 2, 3},
        "b": b"\x00\xffbytes",
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "t": (1, "two", 3.0),
        "keys": {1: "one", (2, 3): "pair"},
        "deep": {"list": [1, {2, 3}, (4,)], "nan": float("nan")},
    }


@task(inputs=["s", "b", "a", "t"], outputs=["types"])
def type_names(params: dict[str, Any]) -> list[str]:
    return [type(params[k]).__name__ for k in ("s", "b", "a", "t")]


@task(outputs=["lock"])
def returns_a_lock(params: dict[str, Any]) -> Any:
    return threading.Lock()


def server_tasks(client: LatticeClient, workflow_id: str) -> list[dict[str, str]]:
    """The workflow's tasks as the server sees them (plain HTTP, not the SDK)."""
    response = httpx.get(f"{client.server_url}/get_workflow_tasks/{workflow_id}", timeout=WAIT)
    assert response.status_code == 200, response.text
    return list(response.json()["tasks"])


@pytest.fixture(scope="module")
def client(api_server: InProcessServer) -> Iterator[LatticeClient]:
    with LatticeClient(api_server.url, timeout=WAIT) as c:
        yield c


# --- the public surface -------------------------------------------------------------------


def test_public_names_import_from_the_package() -> None:
    for name in lattice.__all__:
        assert getattr(lattice, name) is not None, name
    assert {"LatticeClient", "task", "TaskFailedError", "LatticeConnectionError"} <= set(
        lattice.__all__
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"resources": {"gpus": 1}}, InvalidResourceError, "'gpus'"),
        ({"resources": {"cpu": -2}}, InvalidResourceError, "'cpu'"),
        ({"batch_size": 0}, LatticeInputError, "batch_size"),
        ({"batch_size": 4, "batch_timeout": -1.0}, LatticeInputError, "batch_timeout"),
        ({"priority": 7}, LatticeInputError, "priority"),
        ({"inputs": ["x", "x"]}, LatticeInputError, "duplicate"),
        ({"outputs": "y"}, LatticeInputError, "outputs"),
        ({"sandbox": "vm"}, LatticeInputError, "'vm'"),
    ],
)
def test_task_decorator_checks_its_arguments_at_once(
    kwargs: dict[str, Any], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        task(**kwargs)


def test_decorated_task_stays_callable_locally() -> None:
    assert square({"x": 9}) == {"y": 81}
    assert label({"z": 2, "tag": "t"}) == "t=2"
    assert square.__name__ == "square"


# --- building mistakes raise at once and leave the workflow unchanged ---------------------


def test_add_task_with_a_missing_or_unknown_input_raises_before_anything_is_sent(
    client: LatticeClient,
) -> None:
    wf = client.create_workflow()

    with pytest.raises(LatticeInputError, match=r"missing \['x'\]"):
        wf.add_task(square, inputs={})
    with pytest.raises(LatticeInputError, match=r"unknown \['w'\]"):
        wf.add_task(square, inputs={"x": 1, "w": 2})

    assert wf.tasks == []
    assert server_tasks(client, wf.workflow_id) == []


def test_unknown_output_and_foreign_task_references_raise(client: LatticeClient) -> None:
    wf, other = client.create_workflow(), client.create_workflow()
    t = wf.add_task(square, inputs={"x": 2})

    with pytest.raises(LatticeInputError, match=r"no output 'nope'.*\['y'\]"):
        t.outputs["nope"]
    with pytest.raises(LatticeInputError, match="not in this workflow"):
        other.add_task(plus_one_tagged, inputs={"y": t.outputs["y"], "tag": "x"})
    with pytest.raises(LatticeInputError, match="is a task"):
        wf.add_task(plus_one_tagged, inputs={"y": t, "tag": "x"})

    assert [x.task_id for x in wf.tasks] == [t.task_id]
    assert server_tasks(client, other.workflow_id) == []


def test_a_batch_the_server_refuses_is_dropped_whole_and_named(client: LatticeClient) -> None:
    wf = client.create_workflow()
    first = wf.add_task(square, inputs={"x": 1})
    wf.flush()

    def not_a_task(params: dict[str, Any]) -> None: ...

    # A plain function can name any input; the server refuses the bad reference when the
    # buffer is flushed, and the task added with it goes too.
    wf.add_task(square, inputs={"x": 2})
    wf.add_task(not_a_task, inputs={"v": lattice.TaskOutput(first.task_id, "nope")})
    with pytest.raises(
        LatticeInputError,
        match=r"\(not_a_task\) refers to output 'nope' of task .* \(square\).*none of the 2 task",
    ):
        wf.flush()

    tasks = server_tasks(client, wf.workflow_id)
    assert [t["task_id"] for t in tasks] == [first.task_id]
    assert [t.task_id for t in wf.tasks] == [first.task_id]
    wf.flush()  # nothing is left to send


def test_tasks_are_buffered_until_run(client: LatticeClient) -> None:
    wf = client.create_workflow()
    a = wf.add_task(square, inputs={"x": 3})
    b = wf.add_task(plus_one_tagged, inputs={"y": a.outputs["y"], "tag": "t"})
    wf.add_edge(a, b)
    assert server_tasks(client, wf.workflow_id) == []

    run_id = wf.run()

    assert [t["task_id"] for t in server_tasks(client, wf.workflow_id)] == [a.task_id, b.task_id]
    assert wf.get_outputs(run_id, timeout=WAIT)[b]["z"] == 10


def test_a_full_buffer_is_flushed_without_waiting_for_run(
    client: LatticeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflow_module, "FLUSH_TASKS", 3)
    wf = client.create_workflow()
    tasks = [wf.add_task(square, inputs={"x": i}) for i in range(4)]

    on_server = [t["task_id"] for t in server_tasks(client, wf.workflow_id)]
    assert on_server == [t.task_id for t in tasks[:3]]


def test_a_flush_that_cannot_reach_the_server_keeps_its_buffer() -> None:
    with InProcessServer() as server, LatticeClient(server.url, timeout=WAIT) as client:
        wf = client.create_workflow()
        server.stop()
        a = wf.add_task(square, inputs={"x": 2})
        b = wf.add_task(plus_one_tagged, inputs={"y": a.outputs["y"], "tag": "t"})

        with pytest.raises(LatticeConnectionError, match=f"{server.url}/add_tasks"):
            wf.flush()

        assert [t.task_id for t in wf.tasks] == [a.task_id, b.task_id]
        with pytest.raises(LatticeConnectionError):
            wf.run()  # the buffer is sent again, and still cannot be


def test_an_edge_that_closes_a_cycle_is_refused_by_the_flush(client: LatticeClient) -> None:
    wf = client.create_workflow()
    a = wf.add_task(square, inputs={"x": 1})
    b = wf.add_task(plus_one_tagged, inputs={"y": a.outputs["y"], "tag": "t"})
    wf.flush()
    wf.add_edge(b, a)

    with pytest.raises(LatticeInputError, match="cycle"):
        wf.run()

    # Nothing of the refused flush stayed: the workflow still runs a, then b.
    assert wf.get_outputs(wf.run(), timeout=WAIT)[b]["z"] == 2


# --- running ------------------------------------------------------------------------------


def test_chain_results_and_outputs(
    client: LatticeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = client.create_workflow()
    a = wf.add_task(square, inputs={"x": 6})
    b = wf.add_task(plus_one_tagged, inputs={"y": a.outputs["y"], "tag": "six"})
    c = wf.add_task(label, inputs=dict(b.outputs))  # every output of b, by name
    run_id = wf.run()

    messages = wf.get_results(run_id, verbose=True, timeout=WAIT)
    outputs = wf.get_outputs(run_id, timeout=WAIT)

    assert [m["type"] for m in messages] == ["start_task", "finish_task"] * 3 + ["finish_workflow"]
    assert messages[-1]["data"]["success"] is True
    printed = capsys.readouterr().out
    assert "[finish]  square: {'y': 36}" in printed and "[run]     completed" in printed
    assert outputs[a] == {"y": 36}
    assert outputs[b] == {"z": 37, "tag": "six"}
    assert outputs[c.task_id] == {"label": "six=37"}
    status = client.run_status(run_id)
    assert status["status"] == "completed" and len(status["tasks"]) == 3


def test_get_results_quiet_prints_nothing(
    client: LatticeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = client.create_workflow()
    wf.add_task(square, inputs={"x": 1})

    messages = wf.get_results(wf.run(), verbose=False, timeout=WAIT)

    assert messages[-1]["type"] == "finish_workflow"
    assert capsys.readouterr().out == ""


def test_failed_task_raises_task_failed_error_with_the_remote_traceback(
    client: LatticeClient,
) -> None:
    wf = client.create_workflow()
    bad = wf.add_task(explode, inputs={"x": 3})
    wf.add_task(square, inputs={"x": bad.outputs["y"]})
    run_id = wf.run()

    with pytest.raises(TaskFailedError) as failure:
        wf.get_outputs(run_id, timeout=WAIT)

    err = failure.value
    assert err.task == "explode"
    assert err.error.type == "ZeroDivisionError"
    assert err.error.message == "divided 3 by nothing"
    assert "Remote traceback" in str(err) and "in explode" in str(err)
    assert 'raise ZeroDivisionError(f"divided' in err.error.traceback
    kinds = [m["type"] for m in wf.get_results(run_id, verbose=False, timeout=WAIT)]
    assert kinds == ["start_task", "task_exception", "task_skipped", "finish_workflow"]


def test_values_json_cannot_hold_reach_the_client_intact(client: LatticeClient) -> None:
    wf = client.create_workflow()
    odd = wf.add_task(odd_values)
    types = wf.add_task(type_names, inputs={k: odd.outputs[k] for k in ("s", "b", "a", "t")})
    sent = wf.add_task(type_names, inputs={"s": {9}, "b": b"raw", "a": np.zeros(2), "t": (1,)})

    outputs = wf.get_outputs(wf.run(), timeout=WAIT)

    got = outputs[odd]
    assert got["s"] == {1, 2, 3}
    assert got["b"] == b"\x00\xffbytes"
    assert isinstance(got["a"], np.ndarray) and got["a"].dtype == np.int16
    np.testing.assert_array_equal(got["a"], np.arange(6).reshape(2, 3))
    assert got["t"] == (1, "two", 3.0)
    assert got["keys"] == {1: "one", (2, 3): "pair"}
    assert got["deep"]["list"] == [1, {2, 3}, (4,)]
    assert got["deep"]["nan"] != got["deep"]["nan"]  # NaN survives as NaN
    # Downstream tasks, and tasks given such values directly, see the real types too.
    assert outputs[types] == {"types": ["set", "bytes", "ndarray", "tuple"]}
    assert outputs[sent] == {"types": ["set", "bytes", "ndarray", "tuple"]}


def test_result_the_server_cannot_encode_is_that_tasks_error(client: LatticeClient) -> None:
    wf = client.create_workflow()
    fine = wf.add_task(square, inputs={"x": 4})
    wf.add_task(returns_a_lock)
    run_id = wf.run()

    with pytest.raises(TaskFailedError) as failure:
        wf.get_outputs(run_id, timeout=WAIT)

    assert failure.value.task == "returns_a_lock"
    assert failure.value.error.type == "ResultEncodingError"
    assert "lock" in failure.value.error.message
    status = client.run_status(run_id)
    assert status["status"] == "failed"
    assert status["tasks"][fine.task_id]["result"] == {"y": 16}


def test_cancelled_run_raises_run_cancelled(client: LatticeClient, gate: Gate) -> None:
    wf = client.create_workflow()
    held = wf.add_task(gated, inputs={"gate": gate.port})
    wf.add_task(square, inputs={"x": held.outputs["y"]})
    run_id = wf.run()
    stream = wf.stream(run_id, timeout=WAIT)
    assert next(stream)["type"] == "start_task"

    wf.cancel(run_id)
    gate.open()

    assert [m["type"] for m in stream] == ["task_cancelled", "task_cancelled", "finish_workflow"]
    with pytest.raises(RunCancelledError, match=run_id):
        wf.get_outputs(run_id, timeout=WAIT)


def test_waiting_longer_than_the_timeout_raises(client: LatticeClient, gate: Gate) -> None:
    wf = client.create_workflow()
    wf.add_task(gated, inputs={"gate": gate.port})
    run_id = wf.run()

    with pytest.raises(LatticeTimeoutError, match=r"within 0\.3s"):
        wf.get_results(run_id, verbose=False, timeout=0.3)

    gate.open()
    assert wf.get_outputs(run_id, timeout=WAIT)


def test_resume_a_stream_from_a_sequence(client: LatticeClient) -> None:
    wf = client.create_workflow()
    a = wf.add_task(square, inputs={"x": 3})
    wf.add_task(square, inputs={"x": a.outputs["y"]})
    run_id = wf.run()
    full = wf.get_results(run_id, verbose=False, timeout=WAIT)

    tail = list(wf.stream(run_id, timeout=WAIT, from_seq=3))

    assert tail == full[3:] and tail[0]["seq"] == 3


def test_add_edge_orders_tasks_without_data(client: LatticeClient) -> None:
    wf = client.create_workflow()
    first = wf.add_task(square, inputs={"x": 1}, task_name="first")
    second = wf.add_task(square, inputs={"x": 2}, task_name="second")
    wf.add_edge(second, first)

    messages = wf.get_results(wf.run(), verbose=False, timeout=WAIT)

    started = [m["data"]["task_name"] for m in messages if m["type"] == "start_task"]
    assert started == ["second", "first"]


def test_asking_a_local_head_for_its_ray_port_is_a_usage_error(client: LatticeClient) -> None:
    with pytest.raises(LatticeUsageError, match="--ray-port"):
        client.get_ray_head_port()


def test_client_reads_health_nodes_and_existing_workflows(client: LatticeClient) -> None:
    wf = client.create_workflow()

    assert client.health()["executor"] == "local"
    assert [n["node_id"] for n in client.nodes()] == ["local"]
    again = client.get_workflow(wf.workflow_id)
    assert isinstance(again, LatticeWorkflow) and again.workflow_id == wf.workflow_id
    with pytest.raises(NotFoundError, match="no-such-wf"):
        client.get_workflow("no-such-wf")
    with pytest.raises(NotFoundError, match="no-such-run"):
        wf.get_results("no-such-run", verbose=False, timeout=WAIT)
    with pytest.raises(NotFoundError, match="no-such-run"):
        client.run_status("no-such-run")


# --- user code from the user's own modules ------------------------------------------------


def test_task_from_the_users_own_module_runs_on_the_server(
    client: LatticeClient, tmp_path: Path
) -> None:
    name = f"user_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from lattice import task

            OFFSET = 1000

            def helper(v):
                return v + OFFSET

            @task(inputs=["v"], outputs=["r"], resources={"cpu": 0.1})
            def shifted(params):
                return {"r": helper(params["v"])}
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        wf = client.create_workflow()
        t = wf.add_task(module.shifted, inputs={"v": 1})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    # The module is importable nowhere now: the server can only run what travelled by value.

    outputs = wf.get_outputs(wf.run(), timeout=WAIT)

    assert outputs[t] == {"r": 1001}


def test_readme_quickstart_example(
    api_server: InProcessServer, capsys: pytest.CaptureFixture[str]
) -> None:
    quickstart = load_example("quickstart")

    assert quickstart.main(api_server.url) == 0
    assert capsys.readouterr().out.strip() == "42"


def test_agent_workflow_example(
    api_server: InProcessServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = load_example("agent_workflow")
    monkeypatch.setattr(agent, "TOOL_SECONDS", 0.05)  # read by call_tool, which travels by value

    assert agent.run(api_server.url) == 0

    out = capsys.readouterr().out
    answer = next(line for line in out.splitlines() if line.startswith("answer: "))
    assert answer == (
        "answer: search on parallel, agent, runtimes | calculator on parallel, agent, runtimes"
        " | database on parallel, agent, runtimes"
    )
    assert out.count("[finish]") == 5


def load_example(stem: str) -> Any:
    """Import examples/<stem>.py under a unique name, as a user's own module."""
    name = f"lattice_example_{stem}_{uuid.uuid4().hex[:6]}"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- connection problems ------------------------------------------------------------------


def test_connection_errors_name_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with LatticeClient(url, timeout=2) as dead:
        with pytest.raises(LatticeConnectionError, match=f"{url}/create_workflow"):
            dead.create_workflow()
        with pytest.raises(LatticeConnectionError, match=f"{url}/health"):
            dead.health()
    workflow = LatticeWorkflow(Transport(url, timeout=2), "wf")
    ws_url = url.replace("http", "ws")
    with pytest.raises(LatticeConnectionError, match=f"{ws_url}/get_workflow_res/wf/run"):
        list(workflow.stream("run"))


def test_a_server_url_that_is_no_url_is_refused() -> None:
    with pytest.raises(LatticeInputError, match="http://host:port"):
        LatticeClient("127.0.0.1:8000")


# --- many clients at once -----------------------------------------------------------------


def test_ten_concurrent_clients_each_get_their_own_results(api_server: InProcessServer) -> None:
    clients = 10
    barrier = threading.Barrier(clients, timeout=WAIT)

    def one_client(i: int) -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
        with LatticeClient(api_server.url, timeout=WAIT) as c:
            wf = c.create_workflow()
            a = wf.add_task(square, inputs={"x": i})
            b = wf.add_task(plus_one_tagged, inputs={"y": a.outputs["y"], "tag": f"client-{i}"})
            d = wf.add_task(label, inputs={"z": b.outputs["z"], "tag": b.outputs["tag"]})
            e = wf.add_task(square, inputs={"x": b.outputs["z"]})
            barrier.wait()  # all ten runs start together
            run_id = wf.run()
            messages = wf.get_results(run_id, verbose=False, timeout=WAIT)
            outputs = wf.get_outputs(run_id, timeout=WAIT)
            ids = {t.task_id for t in wf.tasks}
            assert {m["data"]["task_id"] for m in messages if "task_id" in m["data"]} == ids
            return wf.workflow_id, run_id, {"d": outputs[d], "e": outputs[e]}, messages

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))

    for i, (wf_id, run_id, outputs, messages) in enumerate(results):
        assert outputs == {"d": {"label": f"client-{i}={i * i + 1}"}, "e": {"y": (i * i + 1) ** 2}}
        assert all(m["data"]["workflow_id"] == wf_id for m in messages)
        assert messages[-1]["data"]["run_id"] == run_id
        assert [m["seq"] for m in messages] == list(range(9))
    assert len({r[0] for r in results}) == clients and len({r[1] for r in results}) == clients
