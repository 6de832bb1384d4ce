"""Bad input gets a clear 4xx naming what is wrong, never a 5xx, and changes nothing."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from lattice.serialization import dumps_b64
from tests.integration.raw_api import RawApi, Ref, code_ser, task_input
from tests.integration.server_fixture import TEST_MAX_BODY_BYTES, InProcessServer


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": params["x"] * 2}


def add_one(params: dict[str, Any]) -> dict[str, Any]:
    return {"z": params["y"] + 1}


def node(x: int) -> int:
    return x


@pytest.fixture(scope="module")
def api(api_server: InProcessServer) -> Iterator[RawApi]:
    client = RawApi(api_server.url)
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class Dag:
    """A saved workflow ``a = double(x=5) -> b = add_one(a.y)`` and one unsaved task ``c``."""

    wf: str
    a: str
    b: str
    c: str

    def save_a(self, **change: Any) -> dict[str, Any]:
        """A valid /save_task body for ``a``, with ``change`` applied."""
        body = {
            "workflow_id": self.wf,
            "task_id": self.a,
            "code_ser": code_ser(double),
            "task_input": task_input({"x": 5}),
            "task_output": {"output_params": {"1": {"key": "y"}}},
            "resources": {"cpu": 0.5},
        }
        return {**body, **change}


@pytest.fixture
def dag(api: RawApi) -> Dag:
    wf = api.workflow()
    a = api.code_task(wf, double, {"x": 5}, ("y",), resources={"cpu": 0.5})
    b = api.code_task(wf, add_one, {"y": Ref(a, "y")}, ("z",))
    c = api.add_task(wf, "unsaved")
    return Dag(wf, a, b, c)


State = tuple[list[dict[str, str]], list[tuple[str, Any]], list[str]]


def state(api: RawApi, dag: Dag) -> State:
    """What a client can see: the workflow's tasks, what a run of its saved part computes
    (after deleting the unsaved task, which a run would refuse), and the cluster's nodes.
    Destructive: call once, at the end."""
    tasks = api.tasks(dag.wf)
    nodes = [n["node_id"] for n in api.ok("GET", "/nodes")["nodes"]]
    api.ok("POST", "/del_task", {"workflow_id": dag.wf, "task_id": dag.c})
    messages = api.messages(dag.wf, api.run(dag.wf))
    results = [
        (m["data"]["task_id"], m["data"]["result"]) for m in messages if m["type"] == "finish_task"
    ]
    return tasks, results, nodes


def expected_state(dag: Dag) -> State:
    return (
        [
            {"task_id": dag.a, "task_name": "double", "task_type": "code"},
            {"task_id": dag.b, "task_name": "add_one", "task_type": "code"},
            {"task_id": dag.c, "task_name": "unsaved", "task_type": "code"},
        ],
        [(dag.a, {"y": 10}), (dag.b, {"z": 11})],
        ["local"],
    )


@dataclass(frozen=True)
class Bad:
    """One bad request: ``request(dag)`` returns (method, path, keyword arguments for httpx)."""

    request: Callable[[Dag], tuple[str, str, dict[str, Any]]]
    status: int
    #: text the answer must contain: the field, id or value at fault
    says: Callable[[Dag], str] | str


def post(path: str, body: Callable[[Dag], Any]) -> Callable[[Dag], tuple[str, str, dict[str, Any]]]:
    return lambda d: ("POST", path, {"json": body(d)})


def raw(
    path: str, content: bytes, content_type: str = "application/json"
) -> Callable[[Dag], tuple[str, str, dict[str, Any]]]:
    return lambda d: ("POST", path, {"content": content, "headers": {"content-type": content_type}})


def edge(src: str, dst: str) -> Callable[[Dag], dict[str, str]]:
    return lambda d: {
        "workflow_id": d.wf,
        "source_task_id": getattr(d, src),
        "target_task_id": getattr(d, dst),
    }


def from_task(ref: Callable[[Dag], str], task: str = "a") -> Callable[[Dag], dict[str, Any]]:
    """A save of ``task`` (a or b) whose only input reads ``ref(dag)``."""

    def body(d: Dag) -> dict[str, Any]:
        param = {"key": "x", "input_schema": "from_task", "value": ref(d)}
        return d.save_a(task_id=getattr(d, task), task_input={"input_params": {"1": param}})

    return body


def chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 8192
        sent += 8192


def batch_task(
    task_id: str | None = None, reads: str | None = None, **change: Any
) -> dict[str, Any]:
    """One task of an /add_tasks body: double(x=1), or double of ``reads`` ("<task>.<key>")."""
    inputs: dict[str, Any] = task_input({"x": 1})
    if reads is not None:
        param = {"key": "x", "input_schema": "from_task", "value": reads}
        inputs = {"input_params": {"1": param}}
    body = {
        "task_id": task_id or str(uuid.uuid4()),
        "task_name": "batched",
        "code_ser": code_ser(double),
        "task_input": inputs,
        "task_output": {"output_params": {"1": {"key": "y"}}},
    }
    return {**body, **change}


def batch(
    tasks: Callable[[Dag], list[dict[str, Any]]],
    edges: Callable[[Dag], list[tuple[str, str]]] = lambda d: [],
) -> Callable[[Dag], tuple[str, str, dict[str, Any]]]:
    def body(d: Dag) -> dict[str, Any]:
        return {
            "workflow_id": d.wf,
            "tasks": tasks(d),
            "edges": [{"source_task_id": s, "target_task_id": t} for s, t in edges(d)],
        }

    return post("/add_tasks", body)


FIXED = str(uuid.uuid4())


BAD_INPUT: dict[str, Bad] = {
    # /add_tasks: all or nothing
    "unknown workflow in add_tasks": Bad(
        post("/add_tasks", lambda d: {"workflow_id": "no-such-wf", "tasks": [batch_task()]}),
        404,
        "no-such-wf",
    ),
    "a batch whose edge closes a cycle": Bad(
        batch(lambda d: [batch_task(FIXED, f"{d.b}.z")], lambda d: [(FIXED, d.a)]),
        400,
        "cycle",
    ),
    "a batch task id that is not a UUID": Bad(
        batch(lambda d: [batch_task(), batch_task("not-a-uuid")]), 400, "not-a-uuid"
    ),
    "a batch with one id twice": Bad(
        batch(lambda d: [batch_task(FIXED), batch_task(FIXED)]), 400, "already exists"
    ),
    "a batch task id already in the workflow": Bad(
        batch(lambda d: [batch_task(), batch_task(d.a)]), 400, "already exists"
    ),
    "a batch task reading an output its source lacks": Bad(
        batch(lambda d: [batch_task(FIXED), batch_task(reads=f"{FIXED}.nope")]), 400, "nope"
    ),
    "a batch edge to an unknown task": Bad(
        batch(lambda d: [batch_task(FIXED)], lambda d: [(FIXED, "no-such-task")]),
        404,
        "no-such-task",
    ),
    "a langgraph task in a batch": Bad(
        batch(lambda d: [batch_task(task_type="langgraph")]), 400, "langgraph"
    ),
    "a batch task without a name": Bad(
        batch(lambda d: [batch_task(task_name="")]), 422, "task_name"
    ),
    # unknown ids: 404
    "unknown workflow in add_task": Bad(
        post(
            "/add_task",
            lambda d: {"workflow_id": "no-such-wf", "task_type": "code", "task_name": "t"},
        ),
        404,
        "no-such-wf",
    ),
    "unknown workflow in get_workflow_tasks": Bad(
        lambda d: ("GET", "/get_workflow_tasks/no-such-wf", {}), 404, "no-such-wf"
    ),
    "unknown workflow in run_workflow": Bad(
        post("/run_workflow", lambda d: {"workflow_id": "no-such-wf"}), 404, "no-such-wf"
    ),
    "unknown task in save_task": Bad(
        post("/save_task", lambda d: d.save_a(task_id="no-such-task")), 404, "no-such-task"
    ),
    "unknown task in save_task_and_add_edge": Bad(
        post("/save_task_and_add_edge", lambda d: d.save_a(task_id="no-such-task")),
        404,
        "no-such-task",
    ),
    "unknown task in add_edge": Bad(
        post("/add_edge", lambda d: {**edge("a", "b")(d), "target_task_id": "no-such-task"}),
        404,
        "no-such-task",
    ),
    "unknown task in del_task": Bad(
        post("/del_task", lambda d: {"workflow_id": d.wf, "task_id": "no-such-task"}),
        404,
        "no-such-task",
    ),
    "unknown workflow in del_edge": Bad(
        post("/del_edge", lambda d: {**edge("a", "b")(d), "workflow_id": "no-such-wf"}),
        404,
        "no-such-wf",
    ),
    "unknown run status": Bad(lambda d: ("GET", "/runs/no-such-run", {}), 404, "no-such-run"),
    "unknown run events": Bad(
        lambda d: ("GET", "/runs/no-such-run/events", {}), 404, "no-such-run"
    ),
    "unknown run cancel": Bad(
        lambda d: ("POST", "/runs/no-such-run/cancel", {}), 404, "no-such-run"
    ),
    "unknown run delete": Bad(lambda d: ("DELETE", "/runs/no-such-run", {}), 404, "no-such-run"),
    "unknown task in run_langgraph_task": Bad(
        post("/run_langgraph_task", lambda d: {"workflow_id": d.wf, "task_id": "no-such-task"}),
        404,
        "no-such-task",
    ),
    # the DAG: cycles and references
    "cycle through add_edge": Bad(post("/add_edge", edge("b", "a")), 400, "cycle"),
    "self edge": Bad(post("/add_edge", edge("a", "a")), 400, "cycle"),
    "cycle through an input": Bad(
        post("/save_task_and_add_edge", from_task(lambda d: f"{d.b}.z")), 400, "cycle"
    ),
    "input from a task not in the workflow": Bad(
        post("/save_task_and_add_edge", from_task(lambda d: "ghost-task.y")), 400, "ghost-task"
    ),
    "input from an output the task does not declare": Bad(
        post("/save_task_and_add_edge", from_task(lambda d: f"{d.a}.nope", task="b")), 400, "'nope'"
    ),
    "malformed reference": Bad(
        post("/save_task_and_add_edge", from_task(lambda d: "no-dot-here")),
        400,
        "task_input.input_params.1.value",
    ),
    "unknown input_schema": Bad(
        post(
            "/save_task",
            lambda d: d.save_a(
                task_input={"input_params": {"1": {"key": "x", "input_schema": "from_moon"}}}
            ),
        ),
        400,
        "input_schema",
    ),
    "del_edge of an edge that is not there": Bad(post("/del_edge", edge("b", "a")), 400, "no edge"),
    "del_edge that carries an input": Bad(post("/del_edge", edge("a", "b")), 400, "'y'"),
    "del_task of a task another reads": Bad(
        post("/del_task", lambda d: {"workflow_id": d.wf, "task_id": d.a}), 400, "reads"
    ),
    "run with an unsaved task": Bad(
        post("/run_workflow", lambda d: {"workflow_id": d.wf}), 400, "no code yet"
    ),
    # task fields
    "unknown task type": Bad(
        post("/add_task", lambda d: {"workflow_id": d.wf, "task_type": "shell", "task_name": "t"}),
        400,
        "'shell'",
    ),
    "empty task name": Bad(
        post("/add_task", lambda d: {"workflow_id": d.wf, "task_type": "code", "task_name": ""}),
        400,
        "task_name",
    ),
    "unknown resource key": Bad(
        post("/save_task", lambda d: d.save_a(resources={"gpus": 1})), 400, "'gpus'"
    ),
    "negative resource": Bad(
        post("/save_task", lambda d: d.save_a(resources={"cpu": -1})), 400, "'cpu'"
    ),
    "resource of the wrong type": Bad(
        post("/save_task", lambda d: d.save_a(resources={"cpu_mem": "lots"})), 400, "'cpu_mem'"
    ),
    "garbage base64 code": Bad(
        post("/save_task", lambda d: d.save_a(code_ser="%%% not base64 %%%")), 400, "code_ser"
    ),
    "base64 that is no pickle": Bad(
        post("/save_task", lambda d: d.save_a(code_ser=base64.b64encode(b"print('hi')").decode())),
        400,
        "code_ser",
    ),
    "garbage serialized_code": Bad(
        post(
            "/save_task",
            lambda d: {
                **{k: v for k, v in d.save_a().items() if k != "code_ser"},
                "serialized_code": "@@",
            },
        ),
        400,
        "code_ser",
    ),
    "no code at all": Bad(
        post("/save_task", lambda d: {k: v for k, v in d.save_a().items() if k != "code_ser"}),
        400,
        "code_ser",
    ),
    "priority out of range": Bad(
        post("/save_task", lambda d: d.save_a(priority=9)), 400, "priority"
    ),
    "batch size zero": Bad(
        post("/save_task", lambda d: d.save_a(batch_config={"batch_size": 0})), 400, "batch_size"
    ),
    "unknown sandbox level": Bad(
        post("/save_task", lambda d: d.save_a(sandbox={"level": "vm"})), 400, "sandbox"
    ),
    "negative sandbox limit": Bad(
        post(
            "/save_task", lambda d: d.save_a(sandbox={"level": "subprocess", "cpu_time_limit": -1})
        ),
        422,
        "cpu_time_limit",
    ),
    "garbage langgraph code": Bad(
        post(
            "/add_langgraph_task",
            lambda d: {"workflow_id": d.wf, "task_name": "n", "code_ser": "not//base64!"},
        ),
        400,
        "code_ser",
    ),
    "langgraph task type for add_langgraph_task": Bad(
        post(
            "/add_langgraph_task",
            lambda d: {
                "workflow_id": d.wf,
                "task_type": "code",
                "task_name": "n",
                "code_ser": code_ser(node),
            },
        ),
        400,
        "'code'",
    ),
    "run_langgraph_task on a code task": Bad(
        post(
            "/run_langgraph_task",
            lambda d: {"workflow_id": d.wf, "task_id": d.a, "args": dumps_b64((1,))},
        ),
        400,
        "not a langgraph task",
    ),
    "bad worker resources": Bad(
        post(
            "/connect_worker",
            lambda d: {"node_ip": "192.0.2.9", "node_id": "w", "resources": {"cpu": "many"}},
        ),
        400,
        "'cpu'",
    ),
    "unknown worker resource key": Bad(
        post(
            "/connect_worker",
            lambda d: {"node_ip": "192.0.2.9", "node_id": "w", "resources": {"tpu": 1}},
        ),
        400,
        "'tpu'",
    ),
    # the body itself
    "non-JSON body": Bad(raw("/add_task", b"{workflow_id: nope"), 422, "json_invalid"),
    "plain text body": Bad(raw("/add_task", b"hello", "text/plain"), 422, "body"),
    "JSON array body": Bad(post("/add_task", lambda d: [d.wf, "code", "t"]), 422, "body"),
    "missing fields": Bad(post("/add_task", lambda d: {"workflow_id": d.wf}), 422, "task_name"),
    "missing workflow_id": Bad(post("/save_task", lambda d: {"task_id": d.a}), 422, "workflow_id"),
    "field of the wrong type": Bad(
        post(
            "/add_task", lambda d: {"workflow_id": d.wf, "task_type": "code", "task_name": {"n": 1}}
        ),
        422,
        "task_name",
    ),
    "task_input not an object": Bad(
        post("/save_task", lambda d: d.save_a(task_input=[1, 2])), 422, "task_input"
    ),
    "oversized body with a length": Bad(
        post("/save_task", lambda d: d.save_a(code_str="x" * (TEST_MAX_BODY_BYTES + 1))),
        413,
        str(TEST_MAX_BODY_BYTES),
    ),
    "oversized chunked body": Bad(
        lambda d: (
            "POST",
            "/save_task",
            {
                "content": chunks(2 * TEST_MAX_BODY_BYTES),
                "headers": {"content-type": "application/json"},
            },
        ),
        413,
        str(TEST_MAX_BODY_BYTES),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_refused_naming_the_fault_and_changes_nothing(
    api: RawApi, dag: Dag, case: Bad
) -> None:
    method, path, kwargs = case.request(dag)

    response = api.http.request(method, path, **kwargs)

    assert response.status_code == case.status, response.text
    payload = response.json()
    text = str(payload["detail"])
    says = case.says if isinstance(case.says, str) else case.says(dag)
    assert says in text, text
    if response.status_code != 422:  # 422 is FastAPI's own validation answer
        assert payload["status"] == "error"
    assert state(api, dag) == expected_state(dag)


NOT_OBJECTS: list[Any] = [
    None,
    0,
    "text",
    [],
    {},
    {"workflow_id": 5},
    {"workflow_id": None},
    {"task_id": []},
]
POST_ROUTES = [
    "/create_workflow",
    "/add_task",
    "/save_task",
    "/save_task_and_add_edge",
    "/add_edge",
    "/del_edge",
    "/del_task",
    "/run_workflow",
    "/add_langgraph_task",
    "/run_langgraph_task",
    "/connect_worker",
    "/disconnect_worker",
]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_no_body_shape_makes_a_route_answer_5xx(api: RawApi, path: str) -> None:
    for body in NOT_OBJECTS:
        response = api.http.post(path, json=body)
        assert response.status_code < 500, (body, response.text)


def test_a_refused_cycle_leaves_no_edge_behind(api: RawApi, dag: Dag) -> None:
    refused = api.http.post("/add_edge", json=edge("b", "a")(dag))
    assert refused.status_code == 400

    # Had b -> a stayed, this would delete it; instead there is nothing to delete.
    probe = api.http.post("/del_edge", json=edge("b", "a")(dag))

    assert probe.status_code == 400 and "no edge" in probe.json()["detail"]


def test_a_refused_save_keeps_the_previous_configuration(api: RawApi, dag: Dag) -> None:
    refused = api.http.post(
        "/save_task_and_add_edge",
        json=dag.save_a(code_ser=code_ser(add_one), resources={"bogus": 1}),
    )
    assert refused.status_code == 400

    # a still runs double(5), not add_one, with its old inputs.
    assert state(api, dag) == expected_state(dag)


def test_refused_requests_with_ids_of_another_workflow(api: RawApi, dag: Dag) -> None:
    other = api.workflow()

    response = api.http.post(
        "/add_edge", json={"workflow_id": other, "source_task_id": dag.a, "target_task_id": dag.b}
    )

    assert response.status_code == 404 and dag.a in response.json()["detail"]
    assert api.tasks(other) == []
    assert state(api, dag) == expected_state(dag)


def test_server_still_serves_after_the_bad_input(api: RawApi) -> None:
    health = httpx.get(f"{api.base_url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "success"
