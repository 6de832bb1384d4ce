"""A direct connection from each task host back to the head, for light tasks.

A Ray actor call costs the head about half a millisecond of CPU per task on a small machine
(binding and serializing the arguments, submitting, then a completion callback on Ray's I/O
thread). A light task sends a fraction of that over this connection instead: the head writes
one frame (the packed submission) and the host writes one back (the outcome).

What still goes through Ray (see :mod:`lattice.executor.ray.hosts`):

* the host itself: created, placed and killed as a Ray actor; one long actor call
  (:meth:`~lattice.executor.ray.hosts.TaskHost.serve`) runs the host's end of the connection,
  and its ref is the host's lifeline: if the host process or its node dies, Ray fails that
  call and every task sent over the connection comes back lost;
* submissions with object-store inputs (large values, outcomes of tasks still running on Ray)
  or code too large to send inline: a Ray actor call, as before;
* outcomes that are large (see ``large_values``) or cannot be pickled here: the host keeps
  them and the head fetches each with one Ray call, so that the head owns the object and large
  values stay in the object store, exactly as for an outcome returned by a Ray call.

Security: the head listens on its Ray node's address only (on ``--ray-node-ports`` LOW+7 when
a range is given, see ray.ports), and a host proves it knows a key
of 32 random bytes (an HMAC of a fresh challenge) that the head passed it through Ray before
anything it sends is read; nothing is unpickled from a peer that has not.

Frames are pickles (cloudpickle when plain pickle cannot carry a value), written with
:class:`multiprocessing.connection.Connection`'s length-prefixed framing.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import pickle
import socket
import threading
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import cloudpickle

logger = logging.getLogger(__name__)

#: head -> host: ``(RUN, key, payload, upstream)``, ``(INTERRUPT, key)``
RUN = "run"
INTERRUPT = "interrupt"
#: host -> head: ``(DONE, key, pickled outcome)``; ``(KEPT, key)``: fetch it with a Ray call
DONE = "done"
KEPT = "kept"

_CHALLENGE_BYTES = 32
_DIGEST = "sha256"
_DIGEST_BYTES = 32
#: a link id is a uuid4 in hex
_LINK_ID_CHARS = 32
#: seconds a connecting host has to answer the challenge
HANDSHAKE_TIMEOUT = 10.0


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with the standard library, or cloudpickle for what it cannot carry."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return cloudpickle.dumps(obj)


def _proof(key: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, challenge, _DIGEST).digest()


def connect(address: tuple[str, int], key: bytes, link_id: str) -> Connection:
    """The host's side of the handshake: answer the head's challenge, name the link."""
    sock = socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT)
    try:
        _no_delay(sock)
        challenge = _recv_exactly(sock, _CHALLENGE_BYTES)
        sock.sendall(_proof(key, challenge) + link_id.encode())
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return Connection(sock.detach())


def _no_delay(sock: socket.socket) -> None:
    # Frames are small and each one is awaited: without this, a frame written while the
    # previous one is unacknowledged waits for the peer's delayed ACK (up to 40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _hang_up(conn: Connection) -> None:
    """Close ``conn`` so that a thread blocked reading it wakes up, and the peer sees the end:
    a plain close() waits for that read (which holds the socket open) to return."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        with sock:
            sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the peer closed the connection during the handshake")
        data += chunk
    return data


class Receiver(Protocol):
    """What a link reports to (the executor's handle of one task)."""

    def report(self, outcome: Any) -> None:
        """The host sent the task's pickled outcome (bytes)."""

    def report_kept(self) -> None:
        """The host kept the outcome: fetch it through Ray."""

    def report_lost(self, reason: str) -> None:
        """The connection ended before the task's outcome arrived."""


class HostLink:
    """The head's end of one host's connection: sends tasks, routes outcomes to receivers.

    Until the host connects (or after the connection ended) :meth:`send_run` returns False and
    the caller uses a Ray call instead.
    """

    def __init__(self, link_id: str, on_closed: Callable[[], None]) -> None:
        self.link_id = link_id
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        #: set once the host has connected, and once the link has ended (for tools and
        #: tests; senders just try)
        self.connected = threading.Event()
        self.closed = threading.Event()
        #: task key -> who waits for its outcome
        self._waiting: dict[str, Receiver] = {}

    def attach(self, conn: Connection) -> None:
        with self._lock:
            if self._closed or self._conn is not None:
                conn.close()
                return
            self._conn = conn
        self.connected.set()
        reader = threading.Thread(
            target=self._read, args=(conn,), name=f"lattice-link-{self.link_id[:8]}", daemon=True
        )
        reader.start()

    def send_run(self, key: str, receiver: Receiver, frame: bytes) -> bool:
        """Send a RUN frame for task ``key``; False if the connection is not up."""
        with self._lock:
            conn = self._conn
            if conn is None or self._closed:
                return False
            self._waiting[key] = receiver
            try:
                conn.send_bytes(frame)
            except OSError:
                del self._waiting[key]
                return False
        return True

    def interrupt(self, key: str) -> None:
        with self._lock:
            conn = self._conn
            if conn is None or self._closed or key not in self._waiting:
                return
            try:
                conn.send_bytes(dumps((INTERRUPT, key)))
            except OSError:
                return  # the reader sees the connection end and reports the task lost

    def close(self, reason: str) -> None:
        """End the connection; every task still out on it is reported lost with ``reason``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            waiting, self._waiting = self._waiting, {}
        if conn is not None:
            _hang_up(conn)
        for receiver in waiting.values():
            receiver.report_lost(reason)
        self._on_closed()
        self.closed.set()

    def _read(self, conn: Connection) -> None:
        reason = "its task host process ended (its connection to the head closed)"
        try:
            while True:
                kind, key, *rest = pickle.loads(conn.recv_bytes())
                with self._lock:
                    receiver = self._waiting.pop(key, None)
                if receiver is None:
                    continue
                if kind == DONE:
                    receiver.report(rest[0])
                else:
                    receiver.report_kept()
        except (EOFError, OSError) as exc:
            if not isinstance(exc, EOFError):
                reason = f"its connection to its task host broke ({exc})"
        finally:
            self.close(reason)


class ChannelServer:
    """The head's listening socket: hosts connect back here, each to its own link."""

    def __init__(self, bind_ip: str, port: int = 0) -> None:
        """Listen on ``bind_ip:port`` (0: a port the system picks)."""
        self.key = os.urandom(32)
        self._sock = socket.create_server((bind_ip, port))
        self.address: tuple[str, int] = (bind_ip, self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self._links: dict[str, HostLink] = {}
        self._accepting = threading.Thread(
            target=self._accept, name="lattice-link-accept", daemon=True
        )
        self._accepting.start()

    def new_link(self) -> HostLink:
        link_id = uuid.uuid4().hex
        link = HostLink(link_id, lambda: self._forget(link_id))
        with self._lock:
            self._links[link_id] = link
        return link

    def _forget(self, link_id: str) -> None:
        with self._lock:
            self._links.pop(link_id, None)

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.close("the executor shut down")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return  # closed
            # The handshake runs apart, so a peer that never answers holds up nobody else.
            threading.Thread(target=self._greet, args=(sock,), daemon=True).start()

    def _greet(self, sock: socket.socket) -> None:
        challenge = os.urandom(_CHALLENGE_BYTES)
        try:
            _no_delay(sock)
            sock.settimeout(HANDSHAKE_TIMEOUT)
            sock.sendall(challenge)
            answer = _recv_exactly(sock, _DIGEST_BYTES + _LINK_ID_CHARS)
            sock.settimeout(None)
        except (OSError, EOFError):
            sock.close()
            return
        proof, link_id = answer[:_DIGEST_BYTES], answer[_DIGEST_BYTES:].decode(errors="replace")
        with self._lock:
            link = self._links.get(link_id)
        if link is None or not hmac.compare_digest(proof, _proof(self.key, challenge)):
            logger.warning("refused a task-host connection that could not prove the key")
            sock.close()
            return
        link.attach(Connection(sock.detach()))
