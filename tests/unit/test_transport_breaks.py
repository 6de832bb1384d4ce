"""The client's transport translates a WebSocket that breaks during its handshake."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from lattice.client.core.transport import Transport
from lattice.exceptions import LatticeConnectionError


def test_a_head_that_dies_during_the_handshake_is_a_connection_error() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(65536)  # the upgrade request; then it dies without answering: a reset, as
        # from a head killed by SIGKILL
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    transport = Transport(f"http://127.0.0.1:{port}", timeout=10)
    try:
        with pytest.raises(LatticeConnectionError, match=f"127.0.0.1:{port}"):
            list(transport.stream("/get_workflow_res/w/r"))
    finally:
        transport.close()
        server.close()
        thread.join(10)
