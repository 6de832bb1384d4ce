"""Talking to a Lattice server the way a non-Python client would: raw HTTP and WebSocket."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lattice.serialization import dumps_b64

WAIT = 15.0


def code_ser(fn: Callable[..., Any]) -> str:
    """``code_ser`` for ``fn``: its module travels by value, so any head can load it."""
    cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
    return dumps_b64(fn)


@dataclass(frozen=True)
class Ref:
    """A ``from_task`` input: output ``key`` of task ``task_id``."""

    task_id: str
    key: str


def task_input(inputs: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for i, (key, value) in enumerate(inputs.items(), start=1):
        if isinstance(value, Ref):
            params[str(i)] = {
                "key": key,
                "input_schema": "from_task",
                "data_type": "any",
                "value": f"{value.task_id}.{value.key}",
            }
        else:
            params[str(i)] = {
                "key": key,
                "input_schema": "from_user",
                "data_type": type(value).__name__,
                "value": value,
            }
    return {"input_params": params}


def task_output(keys: tuple[str, ...]) -> dict[str, Any]:
    return {
        "output_params": {str(i): {"key": k, "data_type": "any"} for i, k in enumerate(keys, 1)}
    }


@dataclass
class Closed:
    """How a WebSocket ended: the messages received, then the close code and reason."""

    messages: list[dict[str, Any]]
    code: int | None
    reason: str


class RawApi:
    """spec/002 over httpx and websockets; ``ok`` asserts 200 and ``"status": "success"``."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.ws_base = "ws" + base_url.removeprefix("http")
        self.http = httpx.Client(base_url=base_url, timeout=WAIT, headers=headers)

    def close(self) -> None:
        self.http.close()

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self.http.request(method, path, json=body)
        assert response.status_code == 200, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        payload = response.json()
        assert payload["status"] == "success", payload
        return dict(payload)

    def workflow(self) -> str:
        return str(self.ok("POST", "/create_workflow")["workflow_id"])

    def add_task(self, workflow_id: str, name: str) -> str:
        body = {"workflow_id": workflow_id, "task_type": "code", "task_name": name}
        return str(self.ok("POST", "/add_task", body)["task_id"])

    def save_body(
        self,
        workflow_id: str,
        task_id: str,
        fn: Callable[..., Any],
        inputs: dict[str, Any] | None = None,
        outputs: tuple[str, ...] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "workflow_id": workflow_id,
            "task_id": task_id,
            "code_str": f"def {fn.__name__}(params): ...",
            "code_ser": code_ser(fn),
            "task_input": task_input(inputs or {}),
            "task_output": task_output(outputs),
            **extra,
        }

    def code_task(
        self,
        workflow_id: str,
        fn: Callable[..., Any],
        inputs: dict[str, Any] | None = None,
        outputs: tuple[str, ...] = (),
        *,
        endpoint: str = "/save_task_and_add_edge",
        **extra: Any,
    ) -> str:
        """add_task + save: a saved code task running ``fn``; returns its id."""
        task_id = self.add_task(workflow_id, fn.__name__)
        self.ok(
            "POST", endpoint, self.save_body(workflow_id, task_id, fn, inputs, outputs, **extra)
        )
        return task_id

    def tasks(self, workflow_id: str) -> list[dict[str, str]]:
        return list(self.ok("GET", f"/get_workflow_tasks/{workflow_id}")["tasks"])

    def run(self, workflow_id: str) -> str:
        return str(self.ok("POST", "/run_workflow", {"workflow_id": workflow_id})["run_id"])

    def ws_url(self, workflow_id: str, run_id: str, query: str = "") -> str:
        return f"{self.ws_base}/get_workflow_res/{workflow_id}/{run_id}{query}"

    def listen(self, workflow_id: str, run_id: str, query: str = "") -> Closed:
        """Every message of the WebSocket until the server closes it."""
        return read_until_closed(self.ws_url(workflow_id, run_id, query))

    def messages(self, workflow_id: str, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        """The run's messages from ``from_seq``; asserts the stream ended normally."""
        query = f"?from_seq={from_seq}" if from_seq else ""
        closed = self.listen(workflow_id, run_id, query)
        assert closed.code == 1000, (closed.code, closed.reason)
        return closed.messages


def read_until_closed(
    url: str, headers: dict[str, str] | None = None, *, via: tuple[str, int] | None = None
) -> Closed:
    """Every message of the WebSocket at ``url`` until the server closes it. ``via``: connect
    to this address instead of ``url``'s (so the handshake names ``url``'s host)."""
    messages: list[dict[str, Any]] = []
    sock = socket.create_connection(via, timeout=WAIT) if via else None
    with connect(url, open_timeout=WAIT, additional_headers=headers, sock=sock) as ws:
        while True:
            try:
                messages.append(json.loads(ws.recv(timeout=WAIT)))
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                return Closed(messages, rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
