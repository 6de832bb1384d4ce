"""ASGI middleware recording HTTP requests and open WebSockets.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one cannot see WebSocket
connections and buffers streamed responses through an extra task.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lattice.observability.metrics import Metrics

# The ASGI interface in plain types (the server's web framework stays in api/).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Route label for requests no route matched (404s, scanners): raw paths would make one
#: series per URL anyone tries.
UNMATCHED_ROUTE = "unmatched"

#: The lifespan-state key under which ``MetricsMiddleware`` looks for the ``Metrics`` when it
#: was added without one (``yield {METRICS_STATE_KEY: metrics}`` from the app's lifespan).
METRICS_STATE_KEY = "metrics"


def route_template(scope: Scope) -> str:
    """The template of the route that handled ``scope`` (``/items/{item_id}``).

    Starlette's router stores the matched route in ``scope["route"]`` (a full match, or the
    partial one behind a 405); read it after the app has run. A route in a mounted sub-app
    reports its template relative to the mount.
    """
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class MetricsMiddleware:
    """Records ``lattice.http.requests`` / ``lattice.http.request.duration`` per HTTP request
    and ``lattice.websocket.connections`` while a WebSocket is open.

    Args:
        app: the ASGI app to wrap.
        metrics: where to record. ``None`` means: look it up per connection in the lifespan
            state under ``METRICS_STATE_KEY``, so the middleware can be added when the app is
            built while the ``Metrics`` is created in the lifespan. Connections that find
            none, or a disabled ``Metrics``, pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self._metrics = metrics

    def _resolve(self, scope: Scope) -> Metrics | None:
        metrics = self._metrics
        if metrics is None:
            state: Any = scope.get("state")
            found = state.get(METRICS_STATE_KEY) if isinstance(state, dict) else None
            metrics = found if isinstance(found, Metrics) else None
        return metrics if metrics is not None and metrics.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        metrics = self._resolve(scope) if kind in ("http", "websocket") else None
        if metrics is None:
            await self.app(scope, receive, send)
        elif kind == "http":
            await self._http(metrics, scope, receive, send)
        else:
            await self._websocket(metrics, scope, receive, send)

    async def _http(self, metrics: Metrics, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500  # what the server answers if the app raises before it responds
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # Also on errors and cancellation (client gone): those requests happened too.
            metrics.http.request_finished(
                route_template(scope),
                str(scope.get("method", "")),
                status,
                time.perf_counter() - started,
            )

    async def _websocket(
        self, metrics: Metrics, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # The route is fixed when the socket is accepted; closing decrements that same series.
        opened_route: str | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal opened_route
            await send(message)
            if message["type"] == "websocket.accept" and opened_route is None:
                opened_route = route_template(scope)
                metrics.http.websocket_opened(opened_route)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if opened_route is not None:
                metrics.http.websocket_closed(opened_route)
