"""Every endpoint and every WebSocket message type of spec/002, over raw HTTP and WebSocket,
against a real in-process server (local executor) on a loopback port."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from lattice.serialization import decode_value, dumps_b64
from tests.integration.raw_api import (
    WAIT,
    RawApi,
    Ref,
    code_ser,
    read_until_closed,
    task_input,
    task_output,
)
from tests.integration.server_fixture import Gate, InProcessServer

# --- task code (travels to the server by value) -------------------------------------------


def pass_gate(port: int) -> None:
    """Block until the test opens the Gate listening on ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.settimeout(30)
        if conn.recv(2) != b"go":
            raise RuntimeError("the gate was closed")


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": params["x"] * 2}


def add_one(params: dict[str, Any]) -> dict[str, Any]:
    return {"z": params["y"] + 1}


def explode(params: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"cannot handle {params['x']}")


def gated(params: dict[str, Any]) -> dict[str, Any]:
    pass_gate(params["gate"])
    return {"y": params["x"]}


def node_add(x: int, y: int = 0) -> dict[str, int]:
    return {"sum": x + y}


def node_explode(x: int) -> None:
    raise KeyError(f"no key {x}")


# --- fixtures and checks --------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(api_server: InProcessServer) -> Iterator[RawApi]:
    client = RawApi(api_server.url)
    try:
        yield client
    finally:
        client.close()


def chain(api: RawApi, x: int = 20) -> tuple[str, str, str]:
    """A two-task workflow: double(x) -> add_one; returns (workflow, double, add_one) ids."""
    wf = api.workflow()
    a = api.code_task(wf, double, {"x": x}, ("y",))
    b = api.code_task(wf, add_one, {"y": Ref(a, "y")}, ("z",))
    return wf, a, b


def check_framing(messages: list[dict[str, Any]], first_seq: int = 0) -> None:
    """Each message is exactly {type, data, seq}, seqs count up from first_seq, the run ends
    with exactly one finish_workflow, and it is the last message."""
    assert messages, "no messages"
    for i, message in enumerate(messages):
        assert set(message) == {"type", "data", "seq"}, message
        assert message["seq"] == first_seq + i, messages
    kinds = [m["type"] for m in messages]
    assert kinds.count("finish_workflow") == 1 and kinds[-1] == "finish_workflow", kinds


def by_task(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in messages:
        if "task_id" in m["data"]:
            out.setdefault(m["data"]["task_id"], []).append(m["type"])
    return out


# --- workflow building --------------------------------------------------------------------


def test_create_workflow_and_add_task_answer_success_with_ids(api: RawApi) -> None:
    wf = api.workflow()
    task_id = api.add_task(wf, "first")
    other = api.workflow()

    assert wf != other
    assert api.tasks(wf) == [{"task_id": task_id, "task_name": "first", "task_type": "code"}]
    assert api.tasks(other) == []


def test_save_task_without_edges_then_add_edge_by_hand(api: RawApi) -> None:
    wf = api.workflow()
    a = api.code_task(wf, double, {"x": 5}, ("y",), endpoint="/save_task")
    b = api.add_task(wf, "later")
    body = api.save_body(wf, b, add_one, {"y": Ref(a, "y")}, ("z",), task_name="renamed")

    # /save_task does not add edges: a reference without one is refused, then accepted.
    refused = api.http.post("/save_task", json=body)
    assert refused.status_code == 400 and "without an edge" in refused.json()["detail"]
    api.ok("POST", "/add_edge", {"workflow_id": wf, "source_task_id": a, "target_task_id": b})
    api.ok("POST", "/save_task", body)

    assert [t["task_name"] for t in api.tasks(wf)] == ["double", "renamed"]
    messages = api.messages(wf, api.run(wf))
    results = {m["data"]["task_id"]: m["data"]["result"] for m in messages if "result" in m["data"]}
    assert results == {a: {"y": 10}, b: {"z": 11}}


def test_serialized_code_is_accepted_as_code_ser(api: RawApi) -> None:
    """The documented client sends ``serialized_code``; the server takes it as ``code_ser``."""
    wf = api.workflow()
    task_id = api.add_task(wf, "double")
    body = api.save_body(wf, task_id, double, {"x": 4}, ("y",))
    body["serialized_code"] = body.pop("code_ser")
    api.ok("POST", "/save_task_and_add_edge", body)

    finish = [m for m in api.messages(wf, api.run(wf)) if m["type"] == "finish_task"]
    assert finish[0]["data"]["result"] == {"y": 8}


def test_del_edge_and_del_task_change_the_dag(api: RawApi) -> None:
    wf = api.workflow()
    a = api.code_task(wf, double, {"x": 1}, ("y",))
    b = api.code_task(wf, double, {"x": 2}, ("y",))
    c = api.code_task(wf, double, {"x": 3}, ("y",))
    edge = {"workflow_id": wf, "source_task_id": a, "target_task_id": b}
    api.ok("POST", "/add_edge", edge)
    api.ok("POST", "/add_edge", {**edge, "source_task_id": b, "target_task_id": c})

    api.ok("POST", "/del_edge", edge)
    # With a -> b gone, b -> a no longer closes a cycle.
    api.ok("POST", "/add_edge", {**edge, "source_task_id": b, "target_task_id": a})
    api.ok("POST", "/del_task", {"workflow_id": wf, "task_id": c})

    assert [t["task_id"] for t in api.tasks(wf)] == [a, b]
    started = [
        m["data"]["task_id"] for m in api.messages(wf, api.run(wf)) if m["type"] == "start_task"
    ]
    assert started == [b, a]


def test_add_tasks_adds_a_batch_whose_tasks_refer_to_each_other(api: RawApi) -> None:
    wf = api.workflow()
    first = api.code_task(wf, double, {"x": 1}, ("y",))
    a, b = str(uuid.uuid4()), str(uuid.uuid4())

    def task(task_id: str | None, fn: Any, inputs: dict[str, Any], out: str) -> dict[str, Any]:
        return {
            "task_id": task_id,
            "task_name": fn.__name__,
            "code_ser": code_ser(fn),
            "task_input": task_input(inputs),
            "task_output": task_output((out,)),
        }

    answer = api.ok(
        "POST",
        "/add_tasks",
        {
            "workflow_id": wf,
            # b reads a, listed after it; a reads the task saved before the batch; the last
            # task has no id and gets one from the server
            "tasks": [
                task(b, add_one, {"y": Ref(a, "y")}, "z"),
                task(a, double, {"x": Ref(first, "y")}, "y"),
                task(None, double, {"x": 7}, "y"),
            ],
            "edges": [{"source_task_id": first, "target_task_id": b}],
        },
    )

    third = answer["task_ids"][2]
    assert answer["task_ids"][:2] == [b, a] and str(uuid.UUID(third)) == third
    assert [t["task_id"] for t in api.tasks(wf)] == [first, b, a, third]
    messages = api.messages(wf, api.run(wf))
    results = {
        m["data"]["task_id"]: m["data"]["result"] for m in messages if m["type"] == "finish_task"
    }
    assert results == {first: {"y": 2}, a: {"y": 4}, b: {"z": 5}, third: {"y": 14}}


# --- runs and their messages --------------------------------------------------------------


def test_run_streams_the_spec_messages_in_order(api: RawApi) -> None:
    wf, a, b = chain(api, x=20)
    run_id = api.run(wf)

    messages = api.messages(wf, run_id)

    check_framing(messages)
    assert [(m["type"], m["data"].get("task_id")) for m in messages] == [
        ("start_task", a),
        ("finish_task", a),
        ("start_task", b),
        ("finish_task", b),
        ("finish_workflow", None),
    ]
    start, finish = messages[0]["data"], messages[1]["data"]
    assert {"workflow_id", "task_id", "node_ip", "node_id"} <= set(start)
    assert start["workflow_id"] == wf and start["node_id"] == "local"
    assert finish["workflow_id"] == wf and finish["result"] == {"y": 40}
    assert messages[3]["data"]["result"] == {"z": 41}
    final = messages[-1]["data"]
    assert final["run_id"] == run_id
    assert final["status"] == "completed" and final["success"] is True


def test_failed_task_sends_task_exception_and_skips_its_dependants(api: RawApi) -> None:
    wf = api.workflow()
    bad = api.code_task(wf, explode, {"x": 7}, ("y",))
    after = api.code_task(wf, add_one, {"y": Ref(bad, "y")}, ("z",))
    run_id = api.run(wf)

    messages = api.messages(wf, run_id)

    check_framing(messages)
    assert by_task(messages) == {bad: ["start_task", "task_exception"], after: ["task_skipped"]}
    error = next(m for m in messages if m["type"] == "task_exception")["data"]["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "cannot handle 7"
    assert "raise ValueError" in error["traceback"] and "in explode" in error["traceback"]
    skipped = next(m for m in messages if m["type"] == "task_skipped")["data"]
    assert bad in skipped["reason"]
    final = messages[-1]["data"]
    assert final["status"] == "failed" and final["success"] is False
    assert final["tasks"] == {"failed": 1, "skipped": 1}


def test_cancel_sends_task_cancelled_and_a_cancelled_finish(api: RawApi, gate: Gate) -> None:
    wf = api.workflow()
    slow = api.code_task(wf, gated, {"gate": gate.port, "x": 1}, ("y",))
    queued = api.code_task(wf, add_one, {"y": Ref(slow, "y")}, ("z",))
    run_id = api.run(wf)

    with connect(api.ws_url(wf, run_id), open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "start_task"
        api.ok("POST", f"/runs/{run_id}/cancel")
        # A running thread task is reported cancelled at once (its thread runs on, and what
        # it returns later is discarded): the run ends without waiting for it.
        while json.loads(ws.recv(timeout=WAIT))["type"] != "finish_workflow":
            pass
        status = api.ok("GET", f"/runs/{run_id}")["run"]
        assert status["status"] == "cancelled"
        assert status["tasks"][queued]["status"] == "cancelled"
        assert status["tasks"][slow]["status"] == "cancelled"
    gate.open()  # let the thread go; its late result must change nothing below
    messages = api.messages(wf, run_id)

    check_framing(messages)
    assert by_task(messages) == {slow: ["start_task", "task_cancelled"], queued: ["task_cancelled"]}
    final = messages[-1]["data"]
    assert final["status"] == "cancelled" and final["success"] is False
    # Cancelling a finished run changes nothing.
    api.ok("POST", f"/runs/{run_id}/cancel")
    assert api.messages(wf, run_id) == messages


def test_late_subscribers_replay_every_message_identically(api: RawApi) -> None:
    wf, _, _ = chain(api)
    run_id = api.run(wf)
    live = api.messages(wf, run_id)  # this one ends with the run

    late = api.messages(wf, run_id)
    later = api.messages(wf, run_id)

    assert late == live and later == live
    events = api.ok("GET", f"/runs/{run_id}/events")
    assert events["finished"] is True and events["events"] == live


def test_second_subscriber_during_the_run_gets_the_past_and_the_rest(
    api: RawApi, gate: Gate
) -> None:
    wf = api.workflow()
    slow = api.code_task(wf, gated, {"gate": gate.port, "x": 3}, ("y",))
    api.code_task(wf, add_one, {"y": Ref(slow, "y")}, ("z",))
    run_id = api.run(wf)

    with (
        connect(api.ws_url(wf, run_id), open_timeout=WAIT) as first,
        connect(api.ws_url(wf, run_id), open_timeout=WAIT) as second,
    ):
        head = json.loads(first.recv(timeout=WAIT))
        assert head["type"] == "start_task" and head["data"]["task_id"] == slow
        # The run is held at the gate: the second subscriber's first message is a replay.
        assert json.loads(second.recv(timeout=WAIT)) == head
        partial = api.ok("GET", f"/runs/{run_id}/events")
        assert partial["finished"] is False and partial["events"] == [head]
        gate.open()
        rest_first = [json.loads(m) for m in first]
        rest_second = [json.loads(m) for m in second]

    assert rest_first == rest_second
    check_framing([head, *rest_first])
    assert rest_first[-1]["data"]["success"] is True


def test_reconnecting_client_resumes_with_from_seq(api: RawApi) -> None:
    wf, _, _ = chain(api)
    run_id = api.run(wf)
    full = api.messages(wf, run_id)

    with connect(api.ws_url(wf, run_id), open_timeout=WAIT) as ws:
        seen = [json.loads(ws.recv(timeout=WAIT)) for _ in range(2)]
    resumed = api.messages(wf, run_id, from_seq=len(seen))

    assert seen + resumed == full
    check_framing(resumed, first_seq=2)
    events = api.ok("GET", f"/runs/{run_id}/events?from_seq=3")["events"]
    assert events == full[3:]


@pytest.mark.parametrize("which", ["workflow", "run", "run of another workflow"])
def test_websocket_for_unknown_ids_closes_at_once_with_4404(api: RawApi, which: str) -> None:
    wf, _, _ = chain(api)
    run_id = api.run(wf)
    api.messages(wf, run_id)
    other_wf = api.workflow()
    path = {
        "workflow": ("no-such-workflow", run_id),
        "run": (wf, "no-such-run"),
        "run of another workflow": (other_wf, run_id),
    }[which]

    closed = api.listen(*path)

    assert closed.messages == []
    assert closed.code == 4404
    assert ("no-such" in closed.reason) or (run_id in closed.reason), closed.reason


def test_run_status_reports_every_task(api: RawApi) -> None:
    wf, a, b = chain(api, x=1)
    run_id = api.run(wf)
    api.messages(wf, run_id)

    run = api.ok("GET", f"/runs/{run_id}")["run"]

    assert run["run_id"] == run_id and run["workflow_id"] == wf
    assert run["status"] == "completed" and run["events"] == 5
    spec_fields = {"status": "completed", "node_id": "local", "result": {"y": 2}}
    assert {k: run["tasks"][a][k] for k in spec_fields} == spec_fields
    # Additions (the dashboard's): the task's name, attempts and times.
    assert run["tasks"][a]["task_name"] == "double" and run["tasks"][a]["attempt"] == 1
    assert run["tasks"][a]["started_at"] <= run["tasks"][a]["ended_at"]
    assert run["tasks"][b]["result"] == {"z": 3}


def test_delete_run_forgets_a_finished_run_and_refuses_a_running_one(
    api: RawApi, gate: Gate
) -> None:
    wf = api.workflow()
    api.code_task(wf, gated, {"gate": gate.port, "x": 1}, ("y",))
    run_id = api.run(wf)

    running = api.http.delete(f"/runs/{run_id}")
    assert running.status_code == 409, running.text
    assert "still running" in running.json()["detail"]
    gate.open()
    messages = api.messages(wf, run_id)  # the refused delete lost nothing
    assert messages[-1]["data"]["success"] is True

    api.ok("DELETE", f"/runs/{run_id}")

    assert api.http.get(f"/runs/{run_id}").status_code == 404
    assert api.http.get(f"/runs/{run_id}/events").status_code == 404
    assert api.listen(wf, run_id).code == 4404


def test_runs_of_one_workflow_are_independent(api: RawApi) -> None:
    wf, _a, b = chain(api, x=2)
    first, second = api.run(wf), api.run(wf)

    assert first != second
    for run_id in (first, second):
        messages = api.messages(wf, run_id)
        assert messages[-1]["data"]["run_id"] == run_id
        assert [m["data"]["result"] for m in messages if m["type"] == "finish_task"][-1] == {"z": 5}
        assert by_task(messages)[b] == ["start_task", "finish_task"]


# --- LangGraph nodes ----------------------------------------------------------------------


def test_langgraph_task_runs_one_call_with_args_and_kwargs(api: RawApi) -> None:
    wf = api.workflow()
    body = {"workflow_id": wf, "task_type": "langgraph", "task_name": "adder"}
    task_id = api.ok("POST", "/add_langgraph_task", {**body, "code_ser": code_ser(node_add)})[
        "task_id"
    ]

    answer = api.ok(
        "POST",
        "/run_langgraph_task",
        {
            "workflow_id": wf,
            "task_id": task_id,
            "args": dumps_b64((2,)),
            "kwargs": dumps_b64({"y": 40}),
        },
    )

    assert decode_value(answer["result"]) == {"sum": 42}
    assert api.tasks(wf) == [{"task_id": task_id, "task_name": "adder", "task_type": "langgraph"}]


def test_langgraph_node_error_comes_back_as_an_error_status(api: RawApi) -> None:
    wf = api.workflow()
    body = {"workflow_id": wf, "task_name": "boom", "serialized_code": code_ser(node_explode)}
    task_id = api.ok("POST", "/add_langgraph_task", body)["task_id"]

    response = api.http.post(
        "/run_langgraph_task", json={"workflow_id": wf, "task_id": task_id, "args": dumps_b64((5,))}
    )

    assert response.status_code == 500  # spec/002 §6: errors as HTTP error codes
    payload = response.json()
    assert payload["status"] == "error"
    assert payload["detail"] == payload["error"]
    assert payload["error"]["type"] == "KeyError"
    assert "no key 5" in payload["error"]["message"]
    assert "node_explode" in payload["error"]["traceback"]


# --- workers, health, nodes, metrics, docs -------------------------------------------------

WORKER_RESOURCES = {
    "cpu": 8,
    "cpu_mem": 16384,
    "gpu_resource": {"0": {"gpu_id": 0, "gpu_mem": 8192, "gpu_num": 1}},
}


def settle_scheduler(api: RawApi) -> None:
    """Run a one-task workflow to its end. The scheduler handles its inbox in order, so every
    worker message sent before has been applied when this returns (no polling)."""
    wf = api.workflow()
    api.code_task(wf, double, {"x": 0}, ("y",), resources={"cpu": 0.1})
    assert api.messages(wf, api.run(wf))[-1]["data"]["success"] is True


def test_a_local_head_takes_no_workers_and_keeps_its_node(api: RawApi) -> None:
    before = api.ok("GET", "/nodes")["nodes"]
    body = {"node_ip": "192.0.2.10", "node_id": "worker-1", "resources": WORKER_RESOURCES}

    joined = api.http.post("/connect_worker", json=body)
    left = api.http.post("/disconnect_worker", json={"node_id": "local"})

    assert joined.status_code == 409 and "takes no workers" in joined.json()["detail"]
    assert left.status_code == 403 and "own node" in left.json()["detail"]
    after = api.ok("GET", "/nodes")["nodes"]
    assert [(n["node_id"], n["state"]) for n in after] == [("local", "alive")]
    assert after[0]["total"] == before[0]["total"]


def test_head_ray_port_on_a_local_head_says_why_not(api: RawApi) -> None:
    response = api.http.post("/get_head_ray_port")

    assert response.status_code == 409
    assert "--ray-port" in response.json()["detail"]


def test_health_and_nodes(api: RawApi) -> None:
    health = api.ok("GET", "/health")
    nodes = api.ok("GET", "/nodes")["nodes"]

    assert health["executor"] == "local" and health["nodes"] == 1
    (local,) = nodes
    assert local["node_id"] == "local" and local["state"] == "alive"
    assert local["total"]["cpu"] > 0 and local["available"]["cpu"] <= local["total"]["cpu"]
    assert {"cpu", "memory_bytes", "gpus"} <= set(local["total"])


def test_metrics_count_the_runs(api: RawApi) -> None:
    wf, _, _ = chain(api)
    api.messages(wf, api.run(wf))

    response = api.http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "lattice_" in response.text


def test_docs_serve_the_openapi_ui_listing_every_endpoint(api: RawApi) -> None:
    docs = api.http.get("/docs")
    schema = api.http.get("/openapi.json").json()

    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert {
        "/create_workflow",
        "/add_task",
        "/save_task",
        "/save_task_and_add_edge",
        "/add_edge",
        "/del_edge",
        "/del_task",
        "/get_workflow_tasks/{workflow_id}",
        "/run_workflow",
        "/add_langgraph_task",
        "/run_langgraph_task",
        "/connect_worker",
        "/disconnect_worker",
        "/get_head_ray_port",
        "/runs/{run_id}",
        "/runs/{run_id}/events",
        "/runs/{run_id}/cancel",
        "/health",
        "/nodes",
    } <= set(schema["paths"])


def test_every_successful_json_answer_says_success(api: RawApi) -> None:
    """Walk every JSON endpoint once more with plain httpx (no ``ok`` helper in between)."""
    http = api.http
    wf = http.post("/create_workflow").json()["workflow_id"]
    tid = http.post(
        "/add_task", json={"workflow_id": wf, "task_type": "code", "task_name": "t"}
    ).json()["task_id"]
    answers: list[httpx.Response] = [
        http.post("/save_task_and_add_edge", json=api.save_body(wf, tid, double, {"x": 1}, ("y",))),
        http.get(f"/get_workflow_tasks/{wf}"),
    ]
    run = http.post("/run_workflow", json={"workflow_id": wf})
    api.messages(wf, run.json()["run_id"])
    run_id = run.json()["run_id"]
    answers += [
        run,
        http.get(f"/runs/{run_id}"),
        http.get(f"/runs/{run_id}/events"),
        http.post(f"/runs/{run_id}/cancel"),
        http.get("/health"),
        http.get("/nodes"),
        http.delete(f"/runs/{run_id}"),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "success", (response.request.url, response.text)


def test_closed_stream_after_finish_has_code_1000(api: RawApi) -> None:
    wf, _, _ = chain(api)
    run_id = api.run(wf)

    closed = read_until_closed(api.ws_url(wf, run_id))

    assert closed.code == 1000
    assert closed.messages[-1]["type"] == "finish_workflow"
