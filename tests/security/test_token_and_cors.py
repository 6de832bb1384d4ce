"""Safe by default: loopback bind, a token on every route and the WebSocket, CORS from config."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from lattice import LatticeClient, LatticeUsageError, LatticeWorkflow, task
from lattice.api.server import create_app
from lattice.cli.cli import build_parser
from lattice.client.core.transport import Transport
from lattice.config.settings import ServerSettings
from tests.integration.raw_api import read_until_closed
from tests.integration.server_fixture import CORS_ORIGIN, TEST_TOKEN, InProcessServer

WAIT = 15.0
OTHER_ORIGIN = "http://evil.example"


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def triple(params: dict[str, int]) -> dict[str, int]:
    return {"y": 3 * params["x"]}


#: routes the OpenAPI schema leaves out
UNLISTED_ROUTES = [
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
]


def every_http_route() -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of the app, path parameters filled in."""
    schema = create_app(ServerSettings(executor="local", token="t" * 16)).openapi()
    routes = [
        (method.upper(), re.sub(r"\{[^}]+\}", "some-id", path))
        for path, operations in schema["paths"].items()
        for method in operations
    ]
    return routes + UNLISTED_ROUTES


HTTP_ROUTES = every_http_route()


@pytest.fixture(scope="module")
def http(token_server: InProcessServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=token_server.url, timeout=WAIT) as client:
        yield client


# --- the token ----------------------------------------------------------------------------


def test_route_list_covers_the_api() -> None:
    paths = {p for _, p in HTTP_ROUTES}
    assert {"/create_workflow", "/run_workflow", "/runs/some-id", "/health", "/docs"} <= paths
    assert len(HTTP_ROUTES) >= 20


@pytest.mark.parametrize(("method", "path"), HTTP_ROUTES, ids=[f"{m} {p}" for m, p in HTTP_ROUTES])
def test_every_http_route_refuses_a_request_without_the_token(
    http: httpx.Client, method: str, path: str
) -> None:
    for headers in ({}, {"X-Lattice-Token": "wrong"}, {"Authorization": f"Basic {TEST_TOKEN}"}):
        response = http.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (headers, response.text)
        assert response.json() == {"status": "error", "detail": "missing or wrong Lattice token"}


@pytest.mark.parametrize(
    "headers",
    [{"X-Lattice-Token": TEST_TOKEN}, {"Authorization": f"Bearer {TEST_TOKEN}"}],
    ids=["header", "bearer"],
)
def test_the_token_is_accepted_in_a_header(http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.post("/create_workflow", headers=headers)

    assert response.status_code == 200 and response.json()["status"] == "success"


def test_websocket_without_the_token_is_closed_with_4401(token_server: InProcessServer) -> None:
    url = f"{token_server.ws_url}/get_workflow_res/some-wf/some-run"

    for closed in (read_until_closed(url), read_until_closed(url, {"X-Lattice-Token": "wrong"})):
        assert closed.messages == []
        assert closed.code == 4401
        assert "token" in closed.reason


def test_websocket_takes_the_token_in_the_query_or_a_header(
    token_server: InProcessServer,
) -> None:
    headers = {"X-Lattice-Token": TEST_TOKEN}
    with LatticeClient(token_server.url, token=TEST_TOKEN, timeout=WAIT) as client:
        wf = client.create_workflow()
        wf.add_task(triple, inputs={"x": 5})
        run_id = wf.run()
    url = f"{token_server.ws_url}/get_workflow_res/{wf.workflow_id}/{run_id}"

    by_query = read_until_closed(f"{url}?token={TEST_TOKEN}")
    by_header = read_until_closed(url, headers)

    assert by_query.code == 1000 and by_header.code == 1000
    assert by_query.messages == by_header.messages
    assert by_query.messages[1]["data"]["result"] == {"y": 15}


def test_client_with_the_token_runs_workflows(
    token_server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_TOKEN", TEST_TOKEN)
    with LatticeClient(token_server.url, timeout=WAIT) as client:  # token from the environment
        wf = client.create_workflow()
        t = wf.add_task(triple, inputs={"x": 7})
        outputs = wf.get_outputs(wf.run(), timeout=WAIT)

    assert outputs[t] == {"y": 21}


def test_client_without_the_token_is_told_to_pass_one(
    token_server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LATTICE_TOKEN", raising=False)
    with LatticeClient(token_server.url, timeout=WAIT) as client:
        with pytest.raises(LatticeUsageError, match="token"):
            client.create_workflow()
        with LatticeClient(token_server.url, token=TEST_TOKEN, timeout=WAIT) as good:
            wf = good.create_workflow()
            wf.add_task(triple, inputs={"x": 1})
            run_id = wf.run()
        without_token = LatticeWorkflow(Transport(token_server.url), wf.workflow_id)
        with pytest.raises(LatticeUsageError, match="token"):
            next(without_token.stream(run_id))


# --- binding ------------------------------------------------------------------------------


def test_default_bind_is_loopback() -> None:
    assert ServerSettings().host == "127.0.0.1"
    assert build_parser().parse_args(["start", "--head"]).host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_public_address_without_a_token_is_refused(host: str) -> None:
    settings = ServerSettings(host=host, executor="local")

    with pytest.raises(LatticeUsageError, match=r"without a token.*--token or set LATTICE_TOKEN"):
        settings.check()
    with pytest.raises(LatticeUsageError, match="without a token"):
        create_app(settings)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_token(host: str) -> None:
    ServerSettings(host=host, executor="local").check()


def test_public_address_with_a_token_is_allowed() -> None:
    ServerSettings(host="0.0.0.0", executor="local", token="s3cret-s3cret-s3cret").check()


# --- CORS ---------------------------------------------------------------------------------


def preflight(base_url: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base_url}/create_workflow",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-lattice-token",
        },
        timeout=WAIT,
    )


def test_no_cors_origins_by_default(api_server: InProcessServer) -> None:
    assert ServerSettings().cors_origins == ()
    for origin in (CORS_ORIGIN, OTHER_ORIGIN):
        answer = preflight(api_server.url, origin)
        assert "access-control-allow-origin" not in answer.headers
        simple = httpx.get(f"{api_server.url}/health", headers={"Origin": origin})
        # No page of another site may use the head: refused, and unreadable to it.
        assert simple.status_code == 403, simple.text
        assert "may not use this Lattice head" in simple.json()["detail"]
        assert "access-control-allow-origin" not in simple.headers


def test_configured_origin_passes_preflight_even_with_a_token(
    token_server: InProcessServer,
) -> None:
    # A browser never sends the token with a preflight; the configured origin must pass.
    answer = preflight(token_server.url, CORS_ORIGIN)

    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "x-lattice-token" in answer.headers["access-control-allow-headers"].lower()


def test_unlisted_origin_gets_no_allow_origin(token_server: InProcessServer) -> None:
    answer = preflight(token_server.url, OTHER_ORIGIN)

    assert "access-control-allow-origin" not in answer.headers


def test_requests_from_the_configured_origin_carry_cors_headers(
    http: httpx.Client,
) -> None:
    allowed = http.get("/health", headers={"Origin": CORS_ORIGIN, "X-Lattice-Token": TEST_TOKEN})
    refused = http.get("/health", headers={"Origin": CORS_ORIGIN})
    other = http.get("/health", headers={"Origin": OTHER_ORIGIN, "X-Lattice-Token": TEST_TOKEN})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == CORS_ORIGIN
    # The page can read why it was refused.
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_docs_need_the_token_too(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 401
    docs = http.get("/docs", headers={"X-Lattice-Token": TEST_TOKEN})
    assert docs.status_code == 200 and "swagger-ui" in docs.text
