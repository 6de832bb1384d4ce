"""Inputs the head cannot store or encode are refused with a 4xx naming the field, change
nothing, and are never echoed back unencoded (the five inputs that gave 500, and kin)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.raw_api import RawApi
from tests.security.heads import Head, state


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": 2 * params["x"]}


SURROGATE = "\ud800"


@pytest.fixture
def api(head: Head) -> Iterator[RawApi]:
    client = head.api()
    try:
        yield client
    finally:
        client.close()


def send(api: RawApi, path: str, body: Any) -> Any:
    """POST ``body`` as JSON text Python writes (lone surrogates and 1e400 included)."""
    raw = json.dumps(body) if not isinstance(body, str) else body
    return api.http.post(path, content=raw, headers={"content-type": "application/json"})


def assert_refused(answer: Any, status: int, names: str) -> None:
    assert answer.status_code == status, answer.text
    answer.text.encode("utf-8")  # the answer itself is valid UTF-8
    assert names in answer.text, answer.text
    assert SURROGATE not in answer.json()["detail"]


def test_a_lone_surrogate_in_an_unknown_id_is_not_echoed(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    before = state(api, wf)

    as_id = send(
        api, "/add_task", {"workflow_id": SURROGATE, "task_type": "code", "task_name": "t"}
    )
    in_path = api.http.get("/get_workflow_tasks/%ED%A0%80")
    in_run = api.http.get("/runs/%ED%A0%80")

    assert_refused(as_id, 422, "workflow_id")
    assert in_path.status_code == 404 and in_run.status_code == 404
    assert state(api, wf) == before


def test_a_surrogate_task_name_is_refused_and_the_workflow_stays_readable(
    head: Head, api: RawApi
) -> None:
    wf = api.workflow()
    before = state(api, wf)

    named = send(api, "/add_task", {"workflow_id": wf, "task_type": "code", "task_name": SURROGATE})
    batch = send(
        api,
        "/add_tasks",
        {"workflow_id": wf, "tasks": [{"task_name": "ok", "code_str": f"# {SURROGATE}"}]},
    )

    assert_refused(named, 422, "task_name")
    assert_refused(batch, 422, "tasks[0].code_str")
    assert api.http.get(f"/get_workflow_tasks/{wf}").status_code == 200
    assert state(api, wf) == before


@pytest.mark.parametrize(
    ("resources", "names"),
    [
        ({"cpu": 1, "cpu_mem": 1e308}, "'cpu_mem'"),
        ('{"cpu": 1, "cpu_mem": 1e400}', "resources.cpu_mem"),
        ('{"cpu": NaN}', "resources.cpu"),
        ({"cpu": 1e9}, "'cpu'"),
        ({"gpu": 1e20}, "'gpu'"),
        ({"gpu": 1, "gpu_mem": 1e300}, "'gpu_mem'"),
    ],
)
def test_task_resources_must_be_finite_and_bounded(
    head: Head, api: RawApi, resources: Any, names: str
) -> None:
    wf = api.workflow()
    task_id = api.code_task(wf, double, {"x": 1}, ("y",))
    before = state(api, wf)
    text = resources if isinstance(resources, str) else json.dumps(resources)
    body = json.dumps(api.save_body(wf, task_id, double, {"x": 2}, ("y",)))
    raw = body[:-1] + f', "resources": {text}}}'

    answer = send(api, "/save_task", raw)

    assert answer.status_code in (400, 422), answer.text
    assert names in answer.text, answer.text
    assert state(api, wf) == before
    # The task still runs what it was saved with (x=1), not the refused x=2.
    run = api.messages(wf, api.run(wf))
    assert run[-1]["data"]["success"] is True


def test_nesting_deeper_than_the_limit_is_refused(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    task_id = api.add_task(wf, "double")
    before = state(api, wf)
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    body = api.save_body(wf, task_id, double, {"x": deep}, ("y",))

    nested = send(api, "/save_task", body)
    very_deep = send(api, "/add_task", "[" * 100_000 + "]" * 100_000)

    assert_refused(nested, 422, "nested deeper than 64 levels")
    assert very_deep.status_code in (400, 422), very_deep.text
    assert state(api, wf) == before


@pytest.mark.parametrize(
    "body",
    [
        '{"node_ip": "192.0.2.7", "node_id": "n", "resources": {"cpu": 1, "cpu_mem": 1e400}}',
        '{"node_ip": "192.0.2.7", "node_id": "n", "resources": {"cpu": 1, "gpu_resource": '
        '{"0": {"gpu_id": 0, "gpu_mem": 1e400}}}}',
    ],
    ids=["cpu_mem", "gpu_mem"],
)
def test_huge_worker_memory_is_refused(head: Head, api: RawApi, body: str) -> None:
    wf = api.workflow()
    before = state(api, wf)

    answer = send(api, "/connect_worker", body)

    assert_refused(answer, 422, "numbers must be finite")
    assert state(api, wf) == before
