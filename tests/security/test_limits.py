"""The token's strength and where it travels, CORS, and the limits that keep one client from
holding the head: body read time and code stored per workflow."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lattice import LatticeUsageError
from lattice.api.server import create_app
from lattice.config.settings import MIN_TOKEN_LENGTH, ServerSettings
from tests.integration.raw_api import RawApi, read_until_closed
from tests.integration.server_fixture import TEST_TOKEN, InProcessServer, start_local_head
from tests.security.heads import BODY_TIMEOUT, IDLE_TIMEOUT, MAX_WORKFLOW_CODE_BYTES, Head, state

WAIT = 15.0


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": 2 * params["x"]}


@pytest.fixture
def api(head: Head) -> Iterator[RawApi]:
    client = head.api()
    try:
        yield client
    finally:
        client.close()


# --- the token ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["t", "s3cret", "x" * (MIN_TOKEN_LENGTH - 1)])
def test_a_short_token_is_refused_saying_how_to_make_one(token: str) -> None:
    settings = ServerSettings(executor="local", token=token)

    with pytest.raises(LatticeUsageError, match=f"at least {MIN_TOKEN_LENGTH} characters") as err:
        create_app(settings)
    assert "secrets.token_urlsafe" in str(err.value)
    ServerSettings(executor="local", token="x" * MIN_TOKEN_LENGTH).check()


def test_the_token_in_the_query_works_only_on_the_websocket(
    token_server: InProcessServer,
) -> None:
    with httpx.Client(base_url=token_server.url, timeout=WAIT) as http:
        by_query = http.post(f"/create_workflow?token={TEST_TOKEN}")
        by_header = http.post("/create_workflow", headers={"X-Lattice-Token": TEST_TOKEN})
        wf = by_header.json()["workflow_id"]
    url = f"{token_server.ws_url}/get_workflow_res/{wf}/no-run?token={TEST_TOKEN}"

    assert by_query.status_code == 401, by_query.text
    assert by_header.status_code == 200
    assert read_until_closed(url).code == 4404  # past the token check: the run is unknown


def test_the_access_log_never_shows_the_token() -> None:
    token = "log-token-" + "z" * 20
    head = start_local_head("--token", token)  # logs every request at the default INFO
    try:
        api = RawApi(head.url, {"X-Lattice-Token": token})
        wf = api.workflow()
        api.code_task(wf, double, {"x": 3}, ("y",))
        run_id = api.run(wf)
        ws = f"ws://127.0.0.1:{head.port}/get_workflow_res/{wf}/{run_id}?token={token}&from_seq=0"
        streamed = read_until_closed(ws)
        refused = httpx.get(f"{head.url}/health?token={token}")
        api.close()
    finally:
        head.stop()

    assert streamed.code == 1000 and refused.status_code == 401
    assert "token=***" in head.output, head.output  # the request lines are there, redacted
    assert token not in head.output


# --- CORS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["*", "null", " * "])
def test_cors_for_every_origin_is_refused(origin: str) -> None:
    with pytest.raises(LatticeUsageError, match="any web page"):
        create_app(ServerSettings(executor="local", cors_origins=(origin,)))


# --- slow bodies and stored code ----------------------------------------------------------


def test_a_body_shorter_than_its_length_gets_408_in_time(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    before = state(api, wf)
    port = int(head.url.rsplit(":", 1)[1])
    body = b'{"workflow_id": "' + wf.encode() + b'", "task_type": "code", '
    request = (
        b"POST /add_task HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n\r\n" + body
    )

    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + WAIT) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 1 s" in answer
    assert state(api, wf) == before


@pytest.mark.parametrize(
    "sent", [b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a"], ids=["silent", "slow"]
)
def test_a_connection_without_complete_headers_is_closed(head: Head, sent: bytes) -> None:
    port = int(head.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=IDLE_TIMEOUT + WAIT) as sock:
        sock.sendall(sent)
        closed = sock.recv(65536)  # blocks until the server closes (b"") or answers

    assert closed == b""
    # A complete request on a fresh connection is still served.
    assert httpx.get(f"{head.url}/health", timeout=WAIT).status_code == 200


def test_a_workflow_holds_only_so_much_code(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    first = api.code_task(wf, double, {"x": 1}, ("y",))
    second = api.add_task(wf, "double")
    before = state(api, wf)
    filler = "#" * (MAX_WORKFLOW_CODE_BYTES // 2 + 1)
    body = api.save_body(wf, second, double, {"x": 2}, ("y",))

    # Half the limit fits once; twice, or once more in the other task, does not.
    fits = api.http.post("/save_task", json={**body, "code_str": filler})
    too_much = api.http.post("/save_task", json={**body, "code_str": filler * 2})
    refill = api.http.post(
        "/save_task",
        json={**api.save_body(wf, first, double, {"x": 1}, ("y",)), "code_str": filler},
    )

    assert fits.status_code == 200, fits.text
    assert too_much.status_code == 413, too_much.text
    assert f"over its limit of {MAX_WORKFLOW_CODE_BYTES}" in too_much.json()["detail"]
    assert refill.status_code == 413
    assert state(api, wf)["tasks"] == before["tasks"]
    messages = api.messages(wf, api.run(wf))
    assert messages[-1]["data"]["success"] is True
