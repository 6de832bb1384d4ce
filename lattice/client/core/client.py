"""LatticeClient: the entry point of the Python SDK (spec/001 §3.1.1)."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from lattice.client.core.transport import ReconnectPolicy, Transport
from lattice.client.core.workflow import LatticeWorkflow


class LatticeClient:
    """Talks to one Lattice server.

    ``token`` defaults to the ``LATTICE_TOKEN`` environment variable; ``timeout`` bounds every
    HTTP call (seconds). Connection problems raise LatticeConnectionError naming the URL.
    ``reconnect``: how a run's stream is followed across a lost connection or a restart of
    the head (see ReconnectPolicy); a run's stream ends only with its ``finish_workflow``.
    """

    def __init__(
        self,
        server_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 30.0,
        token: str | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        self.server_url = server_url
        self._transport = Transport(
            server_url,
            timeout=timeout,
            token=token or os.environ.get("LATTICE_TOKEN"),
            reconnect=reconnect,
        )

    def create_workflow(self) -> LatticeWorkflow:
        workflow_id = self._transport.post("/create_workflow")["workflow_id"]
        return LatticeWorkflow(self._transport, str(workflow_id))

    def get_workflow(self, workflow_id: str) -> LatticeWorkflow:
        """A handle on an existing workflow; NotFoundError if the server has none by that id."""
        self._transport.get(f"/get_workflow_tasks/{workflow_id}")
        return LatticeWorkflow(self._transport, workflow_id)

    def get_ray_head_port(self) -> int:
        return int(self._transport.post("/get_head_ray_port")["port"])

    def health(self) -> dict[str, Any]:
        return self._transport.get("/health")

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._transport.get("/nodes")["nodes"])

    def run_status(self, run_id: str) -> dict[str, Any]:
        """The run's status and every task's status, results (wire form) and errors."""
        return dict(self._transport.get(f"/runs/{run_id}")["run"])

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> LatticeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
