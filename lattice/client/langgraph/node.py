"""One decorated node: its function, its resources, and its registration on the server."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import InvalidResourceError, LatticeUsageError
from lattice.vocabulary import TaskResourceRequirements


def node_resources(
    resources: dict[str, Any] | None,
    *,
    cpu: float | None = None,
    gpu: int | None = None,
    cpu_mem: float | None = None,
    gpu_mem: float | None = None,
) -> dict[str, Any] | None:
    """Merge ``resources`` and the keyword shorthands into one request and validate it.

    Raises:
        InvalidResourceError (a ValueError): an unknown key (named in the message), a bad
            value, or a key given both ways with different values.
    """
    if resources is not None and not isinstance(resources, dict):
        raise InvalidResourceError(
            f"resources must be a dict like {{'cpu': 2}}, got {type(resources).__name__}"
        )
    merged: dict[str, Any] = dict(resources or {})
    for key, value in (("cpu", cpu), ("gpu", gpu), ("cpu_mem", cpu_mem), ("gpu_mem", gpu_mem)):
        if value is None:
            continue
        if key in merged and merged[key] != value:
            raise InvalidResourceError(
                f"resource {key!r} given twice: {key}={value!r} and resources[{key!r}]="
                f"{merged[key]!r}"
            )
        merged[key] = value
    TaskResourceRequirements.from_dict(merged)
    return merged or None


def _check_signature(func: Callable[..., Any], name: str) -> None:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or C callable: LangGraph injects nothing
        return
    store = params.get("store")
    if store is not None and store.kind in (store.POSITIONAL_OR_KEYWORD, store.KEYWORD_ONLY):
        raise LatticeUsageError(
            f"node {name!r} takes a 'store' parameter, but a LangGraph store lives in the "
            "graph's process and cannot be used from a Lattice worker; read or write the "
            "store in an undecorated node and pass what the work needs through the state"
        )


@dataclass
class Registration:
    workflow_id: str
    task_id: str


class RemoteNode:
    """A node function decorated by a LangGraphClient. Registered on the server on its first
    call (thread-safe), and again if the server forgot it (a restarted server)."""

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        resources: dict[str, Any] | None,
        priority: int | None = None,
    ) -> None:
        _check_signature(func, name)
        self.func = func
        self.name = name
        self.resources = resources
        self.priority = priority
        self.is_async = inspect.iscoroutinefunction(func)
        self.lock = threading.Lock()
        self.registration: Registration | None = None
        #: the pickled NodeShim, made once on first registration
        self.code_ser: str | None = None

    def __repr__(self) -> str:
        return f"<lattice langgraph node {self.name} resources={self.resources}>"
