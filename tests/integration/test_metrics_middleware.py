"""MetricsMiddleware in a real FastAPI app served by uvicorn on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.sync.client import connect

from lattice.observability import (
    METRICS_STATE_KEY,
    UNMATCHED_ROUTE,
    Metrics,
    MetricsConfig,
    MetricsMiddleware,
)

Labels = frozenset[tuple[str, str]]
WAIT = 10.0


def build_app(metrics: Metrics | None, lifespan_config: MetricsConfig | None) -> FastAPI:
    """A small API shaped like Lattice's: a path parameter, a POST, a WebSocket, /metrics.

    With ``metrics`` the middleware is given it directly; with ``lifespan_config`` the
    lifespan creates the ``Metrics`` and hands it over as state, as the server does.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Metrics]]:
        assert lifespan_config is not None
        owned = Metrics(lifespan_config)
        try:
            yield {METRICS_STATE_KEY: owned}
        finally:
            owned.shutdown()

    app = FastAPI(lifespan=lifespan if lifespan_config is not None else None)

    def current(request: Request) -> Metrics:
        return metrics if metrics is not None else getattr(request.state, METRICS_STATE_KEY)

    @app.get("/items/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise HTTPException(status_code=404, detail="no such item")
        return {"item_id": item_id}

    @app.post("/items", status_code=201)
    async def create_item() -> dict[str, str]:
        return {"item_id": "new"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("handler failed")

    @app.get("/metrics")
    async def scrape(request: Request) -> Response:
        m = current(request)
        if not m.serves_prometheus:
            raise HTTPException(status_code=404, detail="metrics are not served here")
        body, content_type = m.render_prometheus(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.websocket("/ws/{room}")
    async def echo(ws: WebSocket, room: str) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_text(f"{room}:{await ws.receive_text()}")
        except WebSocketDisconnect:
            return

    if metrics is None:
        app.add_middleware(MetricsMiddleware)
    return app


class WebSocketGate:
    """Outermost ASGI wrapper: signals when a WebSocket connection's app call has returned,
    i.e. after the middleware inside has recorded the close."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.closed = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "websocket":
                self.closed.set()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@dataclass
class Served:
    base_url: str
    ws_url: str
    gate: WebSocketGate
    metrics: Metrics | None


@contextlib.contextmanager
def serve(app: ASGIApp, metrics: Metrics | None) -> Iterator[Served]:
    gate = WebSocketGate(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(gate, log_level="warning", lifespan="auto"))

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            # Unblocks the wait below if startup failed instead of running out the clock.
            server.ready.set()

    thread = threading.Thread(target=run, name="uvicorn-test-server")
    thread.start()
    try:
        assert server.ready.wait(WAIT) and server.started, "uvicorn did not start"
        yield Served(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", gate, metrics)
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive()


def scrape(client: httpx.Client) -> dict[str, dict[Labels, float]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def labels(**kv: str) -> Labels:
    return frozenset(kv.items())


@pytest.fixture(params=["explicit", "lifespan"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """The app with the middleware given its Metrics, or finding it in lifespan state."""
    if request.param == "explicit":
        metrics = Metrics(MetricsConfig())
        try:
            with serve(MetricsMiddleware(build_app(metrics, None), metrics), metrics) as s:
                yield s
        finally:
            metrics.shutdown()
    else:
        with serve(build_app(None, MetricsConfig()), None) as s:
            yield s


def test_requests_are_counted_by_route_template_method_and_status(served: Served) -> None:
    with httpx.Client(base_url=served.base_url, timeout=WAIT) as client:
        assert client.get("/items/abc").status_code == 200
        assert client.get("/items/def").status_code == 200
        assert client.get("/items/missing").status_code == 404
        assert client.post("/items").status_code == 201
        assert client.delete("/items/abc").status_code == 405
        assert client.get("/no/such/path/123").status_code == 404
        # uvicorn drops the connection after an app raised, so do not reuse this one.
        assert client.get("/boom", headers={"Connection": "close"}).status_code == 500
        s = scrape(client)

    requests = s["lattice_http_requests_total"]
    assert requests[labels(route="/items/{item_id}", method="GET", status="200")] == 2.0
    assert requests[labels(route="/items/{item_id}", method="GET", status="404")] == 1.0
    assert requests[labels(route="/items", method="POST", status="201")] == 1.0
    assert requests[labels(route="/items/{item_id}", method="DELETE", status="405")] == 1.0
    assert requests[labels(route=UNMATCHED_ROUTE, method="GET", status="404")] == 1.0
    assert requests[labels(route="/boom", method="GET", status="500")] == 1.0
    # No raw path ever becomes a label value.
    assert not any("abc" in v or "123" in v for key in requests for _, v in key)

    durations = s["lattice_http_request_duration_seconds_count"]
    assert durations[labels(route="/items/{item_id}", method="GET")] == 3.0
    assert durations[labels(route="/items", method="POST")] == 1.0
    inf_bucket = s["lattice_http_request_duration_seconds_bucket"]
    assert inf_bucket[labels(route="/items/{item_id}", method="GET", le="+Inf")] == 3.0


def test_websocket_connections_go_up_while_open_and_back_to_zero(served: Served) -> None:
    ws_route = labels(route="/ws/{room}")
    with httpx.Client(base_url=served.base_url, timeout=WAIT) as client:
        with connect(f"{served.ws_url}/ws/lobby", open_timeout=WAIT) as ws:
            ws.send("hello")
            # The echo proves the socket was accepted before we look at the gauge.
            assert ws.recv(timeout=WAIT) == "lobby:hello"
            assert scrape(client)["lattice_websocket_connections"] == {ws_route: 1.0}
        assert served.gate.closed.wait(WAIT), "the server never finished the WebSocket"
        s = scrape(client)

    assert s["lattice_websocket_connections"] == {ws_route: 0.0}
    # WebSockets are not HTTP requests with a status; they are not counted as such.
    assert all(dict(key)["route"] != "/ws/{room}" for key in s["lattice_http_requests_total"])


def test_disabled_metrics_pass_requests_through_and_hide_the_endpoint() -> None:
    app = build_app(None, MetricsConfig(enabled=False))
    with serve(app, None) as served, httpx.Client(base_url=served.base_url, timeout=WAIT) as client:
        assert client.get("/items/abc").json() == {"item_id": "abc"}
        assert client.get("/metrics").status_code == 404
        with connect(f"{served.ws_url}/ws/quiet", open_timeout=WAIT) as ws:
            ws.send("x")
            assert ws.recv(timeout=WAIT) == "quiet:x"
        assert served.gate.closed.wait(WAIT)
