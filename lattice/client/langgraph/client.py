"""LangGraphClient: decorated LangGraph nodes run on a Lattice cluster (spec/001 §3.1.4).

A user keeps their graph and decorates its nodes with ``@client.task``. When LangGraph calls
a decorated node, the call goes to the server (``/run_langgraph_task``, spec/002 §5.7) and
runs in a worker process, on the node whose resources fit; the caller blocks until it
returns (spec/001 §6.2), so parallel branches of a superstep, which LangGraph runs in threads,
run in parallel processes. ``async def`` nodes await the call without blocking the loop.

The client needs neither LangGraph nor LangChain to import; it reads the graph's run context
only when one exists (see ``bridge.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar, overload

from lattice.client.core.transport import Transport
from lattice.client.langgraph import bridge
from lattice.client.langgraph.errors import raise_node_error
from lattice.client.langgraph.node import Registration, RemoteNode, node_resources
from lattice.client.langgraph.pickling import ArgumentPickler
from lattice.client.langgraph.remote import NodeShim
from lattice.client.langgraph.wire import decode_result
from lattice.exceptions import (
    LatticeConnectionError,
    LatticeInputError,
    LatticeServerError,
    LatticeUsageError,
    NotFoundError,
    TaskErrorInfo,
    TaskFailedError,
)
from lattice.vocabulary import parse_priority

F = TypeVar("F", bound=Callable[..., Any])

#: bound of the control calls (create the workflow, register a node)
_CONTROL_TIMEOUT = 30.0
# A node call with no timeout waits as long as the node runs; Transport takes a number of
# seconds, so "no limit" is a week.
_NO_LIMIT = 7 * 24 * 3600.0


class LangGraphClient:
    """Runs decorated LangGraph nodes on the Lattice server at ``server_url``.

    The client creates its workflow on the server lazily, when the first decorated node is
    first called, and registers each node (``/add_langgraph_task``) on its own first call; so
    decorating needs no server, and a module of nodes imports without one. If the server
    forgets them (it restarted), both are registered again on the next call.

    Args:
        server_url: the head's API address.
        timeout: seconds one node call may take before ``LatticeTimeoutError``; None (the
            default) waits as long as the node runs. A call that times out is not cancelled
            on the server.
        token: the server's token; defaults to the ``LATTICE_TOKEN`` environment variable.
        max_concurrency: how many ``async def`` node calls may be in flight at once (each
            waits on a thread of this client, so the event loop is never blocked).

    Raises:
        LatticeInputError: ``server_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        server_url: str = "http://localhost:8000",
        *,
        timeout: float | None = None,
        token: str | None = None,
        max_concurrency: int = 64,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise LatticeInputError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        if max_concurrency < 1:
            raise LatticeInputError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        self.server_url = server_url
        self._transport = Transport(
            server_url,
            timeout=_CONTROL_TIMEOUT,
            token=token or os.environ.get("LATTICE_TOKEN"),
        )
        self._run_timeout = _NO_LIMIT if timeout is None else timeout
        self._max_concurrency = max_concurrency
        self._pickler = ArgumentPickler()
        self._lock = threading.Lock()
        self._workflow_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    # --- the decorator ------------------------------------------------------------------------

    @overload
    def task(self, func: F, /) -> F: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        resources: dict[str, Any] | None = None,
        cpu: float | None = None,
        gpu: int | None = None,
        cpu_mem: float | None = None,
        gpu_mem: float | None = None,
        name: str | None = None,
        priority: int | str | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: F | None = None,
        /,
        *,
        resources: dict[str, Any] | None = None,
        cpu: float | None = None,
        gpu: int | None = None,
        cpu_mem: float | None = None,
        gpu_mem: float | None = None,
        name: str | None = None,
        priority: int | str | None = None,
    ) -> F | Callable[[F], F]:
        """Make a LangGraph node run on the cluster.

        Usable as ``@client.task``, ``@client.task()``, ``@client.task(resources={...})`` or
        ``@client.task(cpu=2, gpu=1, cpu_mem=4096, gpu_mem=8000)`` (memory in MB; the keys of
        spec/001: ``cpu``, ``cpu_mem``, ``gpu``, ``gpu_mem``). The decorated function keeps
        its name and signature, so LangGraph injects ``config``, ``writer``, ``runtime`` as
        it would; a sync node stays sync and an ``async def`` node stays async.

        ``name`` is the task name on the server (default: the function's name).
        ``priority``: ``0``-``4`` or ``"critical"``, ``"high"``, ``"normal"`` (the default),
        ``"low"``, ``"idle"``.

        Raises:
            InvalidResourceError (a ValueError): an unknown resource key, named in the
                message, or a bad value. Raised here, at decoration.
            LatticeUsageError: the node takes a ``store`` parameter (a store cannot be used
                from a worker).
            LatticeInputError (a ValueError): an unknown priority.
        """
        spec = node_resources(resources, cpu=cpu, gpu=gpu, cpu_mem=cpu_mem, gpu_mem=gpu_mem)
        level = None if priority is None else parse_priority(priority)

        def decorate(f: F) -> F:
            if not callable(f):
                raise LatticeUsageError(f"@task decorates a function, got {f!r}")
            node_name = name or getattr(f, "__name__", None) or type(f).__name__
            return self._wrap(f, RemoteNode(f, node_name, spec, level))

        return decorate(func) if func is not None else decorate

    def _wrap(self, func: F, node: RemoteNode) -> F:
        if node.is_async:

            @functools.wraps(func)
            async def async_node(*args: Any, **kwargs: Any) -> Any:
                return await self._acall(node, args, kwargs)

            wrapper: Callable[..., Any] = async_node
        else:

            @functools.wraps(func)
            def sync_node(*args: Any, **kwargs: Any) -> Any:
                return self._call(node, args, kwargs)

            wrapper = sync_node
        wrapper.__lattice_node__ = node  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    # --- calls ------------------------------------------------------------------------------

    def _call(self, node: RemoteNode, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        prepared = bridge.prepare(args, kwargs, self._pickler.dumps, node.name)
        value = self._run(node, prepared)
        return bridge.unwrap(value, prepared.local)

    async def _acall(self, node: RemoteNode, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The run context is read here, on the loop; pickling, the HTTP wait and unpickling
        # happen on a thread; the node's effects are replayed back here.
        prepared = bridge.prepare(args, kwargs, self._pickler.dumps, node.name)
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(self._executor(), self._run, node, prepared)
        return bridge.unwrap(value, prepared.local)

    def _run(self, node: RemoteNode, prepared: bridge.PreparedCall) -> Any:
        """One call on the server; the decoded result (maybe an envelope) or the node's error."""
        args, kwargs = self._encode(node, prepared)
        registration = self._register(node)
        try:
            answer = self._post_run(registration, args, kwargs)
        except NotFoundError:
            # The server no longer knows the workflow or the task (it restarted): register
            # again, once.
            self._forget(registration)
            answer = self._post_run(self._register(node), args, kwargs)
        return self._decode(node, answer)

    def _post_run(self, registration: Registration, args: str, kwargs: str) -> dict[str, Any]:
        body = {
            "workflow_id": registration.workflow_id,
            "task_id": registration.task_id,
            "args": args,
            "kwargs": kwargs,
        }
        try:
            return self._transport.post("/run_langgraph_task", body, self._run_timeout)
        except LatticeServerError as exc:
            # A node that raised comes back as HTTP 500 with its exception as the detail;
            # anything else is the server's or the network's failure.
            if exc.status_code == 500 and isinstance(exc.detail, dict) and "type" in exc.detail:
                return {"status": "error", "error": exc.detail}
            raise

    def _encode(self, node: RemoteNode, prepared: bridge.PreparedCall) -> tuple[str, str]:
        try:
            return self._dumps(prepared)
        except Exception as exc:  # noqa: BLE001 - pickling raises TypeError, PicklingError, ...
            error: Exception = exc
        reduced = bridge.without_unpicklable_context(prepared, node.name)
        if reduced is not None:
            try:
                return self._dumps(reduced)
            except Exception as exc:  # noqa: BLE001 - as above
                error = exc
        raise LatticeInputError(
            f"the arguments of node {node.name!r} cannot be pickled to send them to a Lattice "
            f"worker: {type(error).__name__}: {error}"
        ) from error

    def _dumps(self, prepared: bridge.PreparedCall) -> tuple[str, str]:
        return self._pickler.dumps_b64(prepared.args), self._pickler.dumps_b64(prepared.kwargs)

    def _decode(self, node: RemoteNode, answer: dict[str, Any]) -> Any:
        status = answer.get("status")
        if status == "error":
            raise_node_error(node.name, answer.get("error") or {})
        if status != "success":
            raise LatticeConnectionError(
                f"{self.server_url}/run_langgraph_task answered an unknown status {status!r}"
            )
        try:
            return decode_result(answer.get("result"))
        except Exception as exc:  # unpickling a result runs arbitrary code: any type
            info = TaskErrorInfo.framework(
                "ResultDecodingError",
                f"the result of node {node.name!r} cannot be loaded in this process: "
                f"{type(exc).__name__}: {exc}",
            )
            raise TaskFailedError(node.name, info) from exc

    # --- registration -----------------------------------------------------------------------

    @property
    def workflow_id(self) -> str:
        """The id of this client's workflow on the server (created on first use)."""
        with self._lock:
            if self._closed:
                raise LatticeUsageError("this LangGraphClient is closed")
            if self._workflow_id is None:
                answer = self._transport.post("/create_workflow")
                self._workflow_id = str(answer["workflow_id"])
            return self._workflow_id

    def _register(self, node: RemoteNode) -> Registration:
        workflow_id = self.workflow_id
        with node.lock:
            registration = node.registration
            if registration is not None and registration.workflow_id == workflow_id:
                return registration
            if node.code_ser is None:
                node.code_ser = self._pickler.dumps_b64(NodeShim(node.func, node.name))
            body: dict[str, Any] = {
                "workflow_id": workflow_id,
                "task_type": "langgraph",
                "task_name": node.name,
                "code_ser": node.code_ser,
                "resources": node.resources,
            }
            if node.priority is not None:
                body["priority"] = node.priority
            task_id = str(self._transport.post("/add_langgraph_task", body)["task_id"])
            node.registration = Registration(workflow_id, task_id)
            return node.registration

    def _forget(self, registration: Registration) -> None:
        with self._lock:
            if self._workflow_id == registration.workflow_id:
                self._workflow_id = None

    # --- lifecycle --------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise LatticeUsageError("this LangGraphClient is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._max_concurrency, thread_name_prefix="lattice-langgraph"
                )
            return self._pool

    def close(self) -> None:
        """Close the HTTP connections; node calls afterwards raise LatticeUsageError."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        self._transport.close()

    def __enter__(self) -> LangGraphClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LangGraphClient({self.server_url!r}, workflow_id={self._workflow_id!r})"
