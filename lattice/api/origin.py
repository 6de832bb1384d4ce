"""Where a request claims to come from: the ``Host`` it was sent to and the page (``Origin``)
that sent it.

A web page the user opens can make the browser send requests to 127.0.0.1, and, by pointing
its own name at 127.0.0.1 (DNS rebinding), read the answers as if it were the head's own page.
Such a request names the attacker's host in ``Host``, and a cross-origin one names the page in
``Origin``. So a loopback head serves only loopback ``Host`` names (and those configured), and
a request whose ``Origin`` is neither a configured CORS origin nor the head itself is refused,
WebSocket included (browsers apply no CORS to WebSockets).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from lattice.api.guard import refuse
from lattice.api.models.storable import printable

#: the names a loopback head answers to besides 127.0.0.0/8 and ::1
LOOPBACK_NAMES = frozenset({"localhost"})


def host_name(host: str) -> str:
    """``host`` (a ``Host`` header or URL netloc) without its port and brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class HostGuard:
    """Refuse a ``Host`` that is not one of the head's names (400) and an ``Origin`` that is
    neither in ``cors_origins`` nor the head itself (403), for HTTP and WebSocket alike.

    ``loopback_only``: the head listens on loopback, so only loopback names (and
    ``extra_hosts``) are its names; otherwise any name is, unless ``extra_hosts`` lists them.
    A request without ``Host`` (HTTP/1.0 tools, never a browser) is let through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        loopback_only: bool,
        extra_hosts: Collection[str] = (),
        cors_origins: Collection[str] = (),
    ) -> None:
        self.app = app
        self._loopback_only = loopback_only
        self._hosts = frozenset(host_name(h) for h in extra_hosts)
        self._origins = frozenset(o.rstrip("/") for o in cors_origins)

    def _host_allowed(self, host: str) -> bool:
        name = host_name(host)
        if name in self._hosts:
            return True
        if self._loopback_only:
            return is_loopback_name(name)
        return not self._hosts

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        if origin.rstrip("/") in self._origins:
            return True
        # The head's own pages (same scheme-less host and port) may use it.
        parts = urlsplit(origin)
        return host is not None and parts.scheme in ("http", "https") and parts.netloc == host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _header(scope, b"host")
            if host is not None and not self._host_allowed(host):
                detail = (
                    f"Host {printable(host)[:40]!r} is not a name of this Lattice head (a "
                    "loopback head serves loopback names; add names with --allowed-host)"
                )
                await refuse(scope, receive, send, 400, detail)
                return
            origin = _header(scope, b"origin")
            if origin is not None and not self._origin_allowed(origin, host):
                detail = (
                    f"Origin {printable(origin)[:40]!r} may not use this Lattice head "
                    "(allow a browser origin with --cors-origin)"
                )
                await refuse(scope, receive, send, 403, detail)
                return
        await self.app(scope, receive, send)
