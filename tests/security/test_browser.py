"""A web page cannot reach the head through the user's browser: DNS rebinding (a foreign
``Host``) and cross-site requests (a foreign ``Origin``), HTTP and WebSocket, both executors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.integration.raw_api import RawApi, read_until_closed
from tests.security.heads import Head, state

ATTACKER = "attacker.example"
ATTACKER_PAGE = "http://attacker.example"


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": 2 * params["x"]}


@pytest.fixture
def api(head: Head) -> Iterator[RawApi]:
    client = head.api()
    try:
        yield client
    finally:
        client.close()


def submissions(api: RawApi, workflow_id: str) -> list[tuple[str, dict[str, Any]]]:
    """What a hostile page would send: a new workflow, a task with code, a run."""
    task_id = api.add_task(workflow_id, "double")
    body = api.save_body(workflow_id, task_id, double, {"x": 1}, ("y",))
    return [
        ("/create_workflow", {}),
        ("/add_task", {"workflow_id": workflow_id, "task_type": "code", "task_name": "evil"}),
        ("/save_task_and_add_edge", body),
        ("/run_workflow", {"workflow_id": workflow_id}),
    ]


@pytest.mark.parametrize(
    "host", [ATTACKER, f"{ATTACKER}:8000", "127.0.0.1.nip.io", "192.0.2.1", "[2001:db8::1]:80"]
)
def test_a_foreign_host_is_refused_and_runs_nothing(head: Head, api: RawApi, host: str) -> None:
    wf = api.workflow()
    requests = submissions(api, wf)
    before = state(api, wf)

    answers = [api.http.post(path, json=body, headers={"Host": host}) for path, body in requests]
    reads = [api.http.get(path, headers={"Host": host}) for path in ("/nodes", "/health")]

    for answer in answers + reads:
        assert answer.status_code == 400, answer.text
        assert "is not a name of this Lattice head" in answer.json()["detail"]
    assert state(api, wf) == before


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.2", "[::1]", "LOCALHOST"])
def test_loopback_host_names_are_served(head: Head, host: str) -> None:
    answer = httpx.get(f"{head.url}/health", headers={"Host": f"{host}:1234"})

    assert answer.status_code == 200, answer.text


def test_a_foreign_host_cannot_open_the_websocket(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    api.code_task(wf, double, {"x": 4}, ("y",))
    run_id = api.run(wf)
    url = api.ws_url(wf, run_id)

    port = int(head.url.rsplit(":", 1)[1])
    foreign = url.replace(f"127.0.0.1:{port}", f"{ATTACKER}:{port}")
    closed = read_until_closed(foreign, via=("127.0.0.1", port))

    assert closed.messages == []
    assert closed.code == 4400 and "not a name of this Lattice head" in closed.reason
    assert read_until_closed(url).code == 1000  # the run itself is fine


def test_a_page_of_another_origin_can_neither_read_nor_submit(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    requests = submissions(api, wf)
    before = state(api, wf)
    page = {"Origin": ATTACKER_PAGE}

    answers = [api.http.post(path, json=body, headers=page) for path, body in requests]
    answers.append(api.http.get("/nodes", headers=page))

    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert "may not use this Lattice head" in answer.json()["detail"]
        assert "access-control-allow-origin" not in answer.headers
    assert state(api, wf) == before


def test_a_page_of_another_origin_cannot_open_the_websocket(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    api.code_task(wf, double, {"x": 4}, ("y",))
    run_id = api.run(wf)
    url = api.ws_url(wf, run_id)

    for origin in (ATTACKER_PAGE, "null", "http://localhost:1"):
        closed = read_until_closed(url, {"Origin": origin})
        assert closed.messages == [], origin
        assert closed.code == 4403 and "may not use this Lattice head" in closed.reason
    # The head's own pages may (same host and port), and so may clients that send no Origin.
    own = read_until_closed(url, {"Origin": head.url})
    assert own.code == 1000 and own.messages[-1]["type"] == "finish_workflow"


def test_a_websocket_handshake_is_not_answered_with_the_stream_before_the_check(
    head: Head,
) -> None:
    # The refusal comes after the handshake (so the client learns why), never a stream.
    try:
        closed = read_until_closed(
            f"{head.ws_url}/get_workflow_res/some-wf/some-run", {"Origin": ATTACKER_PAGE}
        )
    except InvalidStatus as exc:  # pragma: no cover - a server that refuses the handshake
        pytest.fail(f"handshake refused without a reason: {exc}")
    assert closed.code == 4403
