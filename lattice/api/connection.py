"""HTTP connections that cannot be held open without sending a request.

uvicorn closes a keep-alive connection that stays idle after a response, but sets no limit on
a connection that never completes a request's headers (connected and silent, or sending them a
byte at a time): each such connection would be kept for good. :class:`HeaderDeadlineProtocol`
is uvicorn's own HTTP protocol with one addition: from the moment a connection opens, and from
the first byte of each request, the request's headers must be complete within the server's
keep-alive timeout (``--idle-timeout``), or the connection is closed. Bodies have their own
limit (:class:`lattice.api.guard.BodyLimit`).
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from lattice.config.settings import ServerSettings


def server_options(settings: ServerSettings) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that carry ``settings``' connection limits."""
    return {
        "http": header_deadline_protocol(),
        # uvicorn counts whole seconds
        "timeout_keep_alive": max(1, round(settings.idle_timeout)),
        "ws_max_size": settings.max_body_bytes,
    }


def header_deadline_protocol() -> Any:
    """The protocol class for ``uvicorn.Config(http=...)``, or ``"auto"`` (uvicorn's choice,
    without the header deadline) when httptools, which it extends, is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return "auto"
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(
                self.timeout_keep_alive, self._headers_too_slow
            )

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

    return HeaderDeadlineProtocol
