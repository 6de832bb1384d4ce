"""Pure ASGI guards in front of every route: the access token, and the size and read time
of request bodies."""

from __future__ import annotations

import asyncio
import hmac
import json
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_HEADER = b"x-lattice-token"
#: the cookie the dashboard's entry (``GET /?token=...``) sets, so that its pages, their API
#: calls and WebSockets carry the token without it in every URL (HttpOnly, SameSite=Strict)
TOKEN_COOKIE = "lattice_token"
#: the one HTTP path that takes ``?token=``: the dashboard's entry, which answers with the
#: cookie and a redirect to itself without the token in the URL
DASHBOARD_ENTRY = "/"


def _cookie_token(value: bytes) -> str | None:
    for part in value.decode("latin-1").split(";"):
        name, _, token = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            return token
    return None


def _token_of(scope: Scope) -> str | None:
    cookie = None
    for name, value in scope.get("headers", []):
        if name == TOKEN_HEADER:
            return value.decode("latin-1")
        if name == b"authorization":
            text = value.decode("latin-1")
            if text.lower().startswith("bearer "):
                return text[7:].strip()
        if name == b"cookie":
            cookie = _cookie_token(value) or cookie
    if cookie is not None:
        return cookie
    if scope["type"] != "websocket" and scope.get("path") != DASHBOARD_ENTRY:
        # A query string ends up in access logs, proxies and browser history; only the
        # WebSocket, which a browser cannot give headers, takes the token there.
        return None
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("token", [None])[0]


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """Answer ``status`` with ``{"status": "error", "detail"}``, or close a WebSocket with
    ``4000 + status`` and ``detail`` as the reason."""
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with a bare 403;
        # accept, then close with an application code (4000 + status) so the client sees why.
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            # A close frame holds at most 123 bytes of reason.
            reason = detail.encode()[:123].decode("utf-8", "ignore")
            await send({"type": "websocket.close", "code": 4000 + status, "reason": reason})
        return
    body = json.dumps({"status": "error", "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenGuard:
    """Every HTTP request and WebSocket must present the token (header ``X-Lattice-Token``,
    ``Authorization: Bearer``, or ``?token=`` for WebSockets); otherwise 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            given = _token_of(scope)
            if given is None or not hmac.compare_digest(given.encode(), self._token):
                await refuse(scope, receive, send, 401, "missing or wrong Lattice token")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before they are buffered, and bodies
    that do not arrive within ``read_timeout`` seconds (slow, or shorter than their
    ``Content-Length``) with 408, so that no request holds a connection open for good."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body over {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await refuse(scope, receive, send, 413, detail)
                return
        # A body without a length (chunked) is counted as it is read. Raising out of the app's
        # receive would not work: FastAPI turns any error while reading the body into its own
        # 400. So answer 413 here, tell the app the client is gone, and drop what it sends.
        seen = 0
        started = refused = body_done = False

        async def limited() -> Message:
            nonlocal seen, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done or self.read_timeout is None:
                # Once the body is in, receive() waits for the client to leave: no limit.
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.read_timeout)
                except asyncio.TimeoutError:
                    refused = True
                    if not started:
                        late = f"request body not received within {self.read_timeout:g} s"
                        await send_error(408, late)
                    return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    refused = True
                    await send_error(413, detail)
                    return {"type": "http.disconnect"}
            return message

        async def send_error(status: int, text: str) -> None:
            await refuse(scope, receive, send, status, text)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, guarded_send)
