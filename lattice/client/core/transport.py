"""HTTP and WebSocket calls to a Lattice server; every foreign error is translated here, once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from lattice.exceptions import (
    LatticeConnectionError,
    LatticeInputError,
    LatticeServerError,
    LatticeTimeoutError,
    LatticeUsageError,
    NotFoundError,
)

TOKEN_HEADER = "X-Lattice-Token"
#: close codes that mean "the stream is over" (any other close, or none, is a broken stream)
_NORMAL_CLOSES = (1000, 1001)


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a client follows a run's stream across a lost connection or a head restart: up to
    ``attempts`` reconnections in a row (each from the last sequence number seen), waiting
    ``first_delay`` seconds before the first and twice as long before each next one, at most
    ``max_delay``. The defaults ride out a head restart of about half a minute."""

    attempts: int = 12
    first_delay: float = 0.2
    max_delay: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.first_delay < 0 or self.max_delay < 0:
            raise LatticeInputError(f"reconnect settings must not be negative: {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnection ``attempt`` (1, 2, ...)."""
        return float(min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))


class Transport:
    """One server: ``post``/``get`` JSON, ``stream`` a WebSocket. Thread-safe (httpx.Client)."""

    def __init__(
        self,
        server_url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        parts = urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LatticeInputError(
                f"server_url must look like http://host:port, got {server_url!r}"
            )
        self.server_url = server_url.rstrip("/")
        self.timeout = timeout
        self.reconnect = reconnect or ReconnectPolicy()
        self._headers = {TOKEN_HEADER: token} if token else {}
        self._http = httpx.Client(base_url=self.server_url, timeout=timeout, headers=self._headers)

    def close(self) -> None:
        self._http.close()

    def post(
        self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        return self._request("POST", path, body, timeout)

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any]:
        return self._request("GET", path, None, timeout)

    def get_bytes(self, path: str, timeout: float | None = None) -> bytes:
        """GET a binary body (e.g. a pickled large value); errors as for :meth:`get`."""
        url = f"{self.server_url}{path}"
        try:
            response = self._http.get(
                path, timeout=timeout if timeout is not None else self.timeout
            )
        except httpx.TimeoutException as exc:
            raise LatticeTimeoutError(f"GET {url} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LatticeConnectionError(f"cannot reach Lattice server at {url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                payload: Any = response.json()
            except ValueError:
                payload = {"detail": response.text}
            raise _error_for("GET", url, response.status_code, payload)
        return response.content

    def delete(self, path: str) -> dict[str, Any]:
        return self._request("DELETE", path, None, None)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> dict[str, Any]:
        url = f"{self.server_url}{path}"
        try:
            response = self._http.request(
                method, path, json=body, timeout=timeout if timeout is not None else self.timeout
            )
        except httpx.TimeoutException as exc:
            raise LatticeTimeoutError(f"{method} {url} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LatticeConnectionError(f"cannot reach Lattice server at {url}: {exc}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = {"detail": response.text}
        if response.status_code >= 400:
            raise _error_for(method, url, response.status_code, payload)
        if not isinstance(payload, dict):
            raise LatticeConnectionError(f"{method} {url} answered non-object JSON")
        return payload

    def stream(self, path: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the JSON messages of a WebSocket until the server closes it normally.

        ``timeout`` bounds the wait for each message. A close with code 4404 raises
        NotFoundError with the server's reason; a connection that breaks (no close frame, or
        any code but 1000/1001, such as 1012 from a head that is stopping) raises
        LatticeConnectionError: it is not the end of what was streamed.
        """
        parts = urlsplit(self.server_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = urlunsplit((scheme, parts.netloc, parts.path + path, "", ""))
        try:
            ws = connect(
                url,
                additional_headers=self._headers,
                open_timeout=self.timeout,
                max_size=None,
                # Run events are small and the link is usually a LAN or loopback: deflating
                # every message cost the head more CPU than sending it (large values go by
                # reference, see results.py).
                compression=None,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed) as exc:
            # ConnectionClosed: the head went away during the handshake.
            raise LatticeConnectionError(f"cannot open WebSocket {url}: {exc!r}") from exc
        with ws:
            while True:
                try:
                    raw = ws.recv(timeout=timeout)
                except TimeoutError as exc:
                    raise LatticeTimeoutError(f"no message from {url} within {timeout}s") from exc
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    reason = exc.rcvd.reason if exc.rcvd else ""
                    if code == 4404:
                        raise NotFoundError(reason or f"{url}: not found") from None
                    if code == 4401:
                        raise LatticeUsageError(f"{url}: {reason}") from None
                    if code in _NORMAL_CLOSES:
                        return
                    raise LatticeConnectionError(
                        f"WebSocket {url} broke: {code or 'no close frame'} {reason}".rstrip()
                    ) from exc
                except OSError as exc:
                    raise LatticeConnectionError(f"WebSocket {url} broke: {exc}") from exc
                yield json.loads(raw)


def _error_for(method: str, url: str, status: int, payload: Any) -> Exception:
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    text = detail if isinstance(detail, str) else json.dumps(detail)
    if status == 404:
        return NotFoundError(text)
    if status in (400, 413, 422):
        return LatticeInputError(f"{method} {url} rejected ({status}): {text}")
    if status == 401:
        return LatticeUsageError(f"{method} {url}: {text} (pass token= to the client)")
    if status == 409:  # the server's LatticeUsageError: asked at the wrong time, not broken
        return LatticeUsageError(f"{method} {url} refused ({status}): {text}")
    return LatticeServerError(f"{method} {url} failed ({status}): {text}", status, detail)
