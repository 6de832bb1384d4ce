"""Large output values: fetched from the server when they are read, not with every message.

A ``finish_task`` carries ``{"__lattice_ref__": {"bytes", "type"}}`` in place of an output
value the server keeps in its executor's object store (see docs/api.md); the value itself is
``GET /runs/{run_id}/results/{task_id}/{key}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import cloudpickle

from lattice.client.core.models import has_large_values
from lattice.client.core.transport import Transport
from lattice.serialization import is_ref_leaf

#: ``(task_id, outputs) -> outputs`` with every large value in place
Resolver = Callable[[str, dict[str, Any]], dict[str, Any]]


def fetch_value(transport: Transport, run_id: str, task_id: str, key: str) -> Any:
    """The value of output ``key`` of ``task_id`` in run ``run_id``, fetched in full."""
    path = f"/runs/{quote(run_id, safe='')}/results/{quote(task_id, safe='')}/{quote(key, safe='')}"
    return cloudpickle.loads(transport.get_bytes(f"{path}?format=pickle"))


def resolver(transport: Transport, run_id: str) -> Resolver:
    """A function that fetches the large values of one task's outputs in run ``run_id``."""

    def resolve(task_id: str, outputs: dict[str, Any]) -> dict[str, Any]:
        if not has_large_values(outputs):
            return outputs
        return {
            k: fetch_value(transport, run_id, task_id, k) if is_ref_leaf(v) else v
            for k, v in outputs.items()
        }

    return resolve


def resolve_message(resolve: Resolver, message: dict[str, Any]) -> dict[str, Any]:
    """A decoded run message with the large values of its ``finish_task`` result fetched."""
    data = message.get("data") or {}
    if message.get("type") != "finish_task" or not has_large_values(data.get("result")):
        return message
    return {**message, "data": {**data, "result": resolve(data["task_id"], data["result"])}}
