"""No client can disable the head's node or register a node that is not its own: each case
of issue 14 with its status, on a local and a Ray head, and the head's state unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.raw_api import RawApi
from tests.security.heads import Head, state

#: spec/002 §5.8's example body: a node that is in no cluster
SPEC_EXAMPLE = {
    "node_ip": "192.168.1.100",
    "node_id": "node-xxx",
    "resources": {
        "cpu": 8,
        "cpu_mem": 16384,
        "gpu_resource": {"0": {"gpu_id": 0, "gpu_mem": 8192, "gpu_num": 1}},
    },
}


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": 2 * params["x"]}


@pytest.fixture
def api(head: Head) -> Iterator[RawApi]:
    client = head.api()
    try:
        yield client
    finally:
        client.close()


def head_node(api: RawApi) -> dict[str, Any]:
    (node,) = api.ok("GET", "/nodes")["nodes"]
    return dict(node)


def assert_still_runs_tasks(api: RawApi) -> None:
    wf = api.workflow()
    api.code_task(wf, double, {"x": 21}, ("y",), resources={"cpu": 1})
    messages = api.messages(wf, api.run(wf))
    assert messages[-1]["data"]["success"] is True, messages[-1]


def test_the_spec_example_for_a_node_not_in_the_cluster_is_refused(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    before = state(api, wf)

    answer = api.http.post("/connect_worker", json=SPEC_EXAMPLE)

    detail = answer.json()["detail"]
    if head.executor == "local":
        assert answer.status_code == 409 and "takes no workers" in detail
    else:
        assert answer.status_code == 404, answer.text
        assert "node-xxx is not an alive node of this head's Ray cluster" in detail
    assert state(api, wf) == before


@pytest.mark.parametrize(
    "resources", [{"cpu": 0}, {"cpu": 0, "cpu_mem": 0}, SPEC_EXAMPLE["resources"]]
)
def test_the_heads_own_node_cannot_be_overwritten(
    head: Head, api: RawApi, resources: dict[str, Any]
) -> None:
    own = head_node(api)
    wf = api.workflow()
    before = state(api, wf)

    answer = api.http.post(
        "/connect_worker",
        json={"node_ip": own["node_ip"], "node_id": own["node_id"], "resources": resources},
    )

    assert answer.status_code == 403, answer.text
    assert "this head's own node" in answer.json()["detail"]
    assert state(api, wf) == before
    assert_still_runs_tasks(api)


def test_the_heads_own_node_cannot_be_disconnected(head: Head, api: RawApi) -> None:
    own = head_node(api)
    wf = api.workflow()
    before = state(api, wf)

    for _ in range(2):
        answer = api.http.post("/disconnect_worker", json={"node_id": own["node_id"]})
        assert answer.status_code == 403, answer.text
        assert "cannot be disconnected" in answer.json()["detail"]

    assert state(api, wf) == before
    assert_still_runs_tasks(api)


def test_unknown_and_repeated_disconnects_are_404(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    before = state(api, wf)

    answers = [
        api.http.post("/disconnect_worker", json={"node_id": node_id})
        for node_id in ("node-xxx", "node-xxx", "f" * 56)
    ]

    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert "is not connected" in answer.json()["detail"]
    assert state(api, wf) == before


@pytest.mark.parametrize(
    ("raw", "status", "names"),
    [
        ('{"cpu": NaN}', 422, "numbers must be finite"),
        ('{"cpu": Infinity}', 422, "numbers must be finite"),
        ('{"cpu": -1}', 400, "'cpu'"),
        ('{"cpu": 1e9}', 400, "'cpu'"),
        ('{"cpu": 8, "gpu_resource": {"0": {"gpu_id": 0, "gpu_num": 1e20}}}', 400, "gpu_num"),
        ('{"cpu": 8, "gpu_resource": {"0": {"gpu_id": 0, "gpu_mem": 1e20}}}', 400, "gpu_mem"),
    ],
)
def test_worker_resources_must_be_finite_and_bounded(
    head: Head, api: RawApi, raw: str, status: int, names: str
) -> None:
    own = head_node(api)
    wf = api.workflow()
    before = state(api, wf)
    body = f'{{"node_ip": "{own["node_ip"]}", "node_id": "node-xxx", "resources": {raw}}}'

    answer = api.http.post(
        "/connect_worker", content=body, headers={"content-type": "application/json"}
    )

    assert answer.status_code == status, answer.text
    assert names in answer.text
    assert state(api, wf) == before
