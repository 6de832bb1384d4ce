"""Build and run workflows in an in-process Orchestrator (no HTTP), on any executor.

The task functions used by the engine tests live here. This module is pickled by value, so a
Ray worker receives them the way a client's code travels, without importing the test suite.
Nothing here sleeps to wait: runs are awaited through their event logs, and long tasks wait at
a :class:`Gate` the test opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import cloudpickle

from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.core.resource.node import NodeResources
from lattice.core.workflow.base import CodeTaskConfig
from lattice.executor.base import ExecutorBackend
from lattice.serialization import decode_value, dumps_b64

cloudpickle.register_pickle_by_value(sys.modules[__name__])

T = TypeVar("T")
GiB = 1024**3
#: CPUs of the node tasks run on: the local test node and the session's Ray node alike
NODE_CPUS = 4
#: seconds any single wait in these tests may take before the test fails
WAIT = 30.0

Message = dict[str, Any]


# --- building workflows -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A ``from_task`` input: output ``key`` of task ``task_id``."""

    task_id: str
    key: str = "out"


def task_input(values: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of inputs: a :class:`Ref` reads another task, anything else is a value."""
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(values.items()):
        if isinstance(value, Ref):
            params[str(i)] = {
                "key": key,
                "input_schema": "from_task",
                "value": f"{value.task_id}.{value.key}",
            }
        else:
            params[str(i)] = {"key": key, "input_schema": "from_user", "value": value}
    return {"input_params": params}


def task_output(keys: Iterable[str]) -> dict[str, Any]:
    return {"output_params": {str(i): {"key": k} for i, k in enumerate(keys)}}


class WorkflowBuilder:
    """Adds code tasks to a new workflow of ``orchestrator`` as the HTTP API would."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.workflow = orchestrator.create_workflow()

    @property
    def workflow_id(self) -> str:
        return self.workflow.workflow_id

    def declare(self, name: str) -> str:
        """Add a task without code yet; return its id."""
        return self.orchestrator.add_task(self.workflow_id, "code", name)

    def save(
        self,
        task_id: str,
        fn: Callable[..., Any],
        inputs: Mapping[str, Any] | None = None,
        *,
        outputs: Iterable[str] = ("out",),
        cpu: float = 0.1,
        resources: dict[str, Any] | None = None,
        batch: dict[str, Any] | None = None,
    ) -> None:
        self.workflow.save_task(
            task_id,
            CodeTaskConfig(
                task_input=task_input(inputs or {}),
                task_output=task_output(outputs),
                code_str=None,
                serialized_code=dumps_b64(fn),
                resources=resources if resources is not None else {"cpu": cpu},
                batch_config=batch,
            ),
            add_edges=True,
        )

    def add(
        self,
        fn: Callable[..., Any],
        inputs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        outputs: Iterable[str] = ("out",),
        cpu: float = 0.1,
        resources: dict[str, Any] | None = None,
        batch: dict[str, Any] | None = None,
    ) -> str:
        """Add and save a task running ``fn``; return its id."""
        task_id = self.declare(name or fn.__name__)
        self.save(task_id, fn, inputs, outputs=outputs, cpu=cpu, resources=resources, batch=batch)
        return task_id


def make_orchestrator(executor: ExecutorBackend, **kwargs: Any) -> Orchestrator:
    """An initialized Orchestrator on ``executor`` (its scheduler thread is running)."""
    orchestrator = Orchestrator(executor, **kwargs)
    orchestrator.initialize()
    return orchestrator


# --- running and reading runs -----------------------------------------------------------------


@dataclass(frozen=True)
class RunMessages:
    """The messages of one finished run, as a client receives them, with lookups."""

    run_id: str
    messages: list[Message]

    @property
    def status(self) -> str:
        last = self.messages[-1]
        assert last["type"] == "finish_workflow", last
        return str(last["data"]["status"])

    def of_type(self, type_: str) -> list[Message]:
        return [m for m in self.messages if m["type"] == type_]

    def event(self, type_: str, task_id: str) -> Message:
        found = [m for m in self.of_type(type_) if m["data"].get("task_id") == task_id]
        assert len(found) == 1, f"expected one {type_} of {task_id}, got {found}"
        return found[0]

    def seq(self, type_: str, task_id: str) -> int:
        return int(self.event(type_, task_id)["seq"])

    def result(self, task_id: str) -> Any:
        return decode_value(self.event("finish_task", task_id)["data"]["result"])

    def error(self, task_id: str) -> dict[str, Any]:
        return dict(self.event("task_exception", task_id)["data"]["error"])

    def task_status(self, task_id: str) -> str:
        kinds = {
            "finish_task": "completed",
            "task_exception": "failed",
            "task_skipped": "skipped",
            "task_cancelled": "cancelled",
        }
        ends = [
            kinds[m["type"]]
            for m in self.messages
            if m["type"] in kinds and m["data"].get("task_id") == task_id
        ]
        assert len(ends) == 1, f"task {task_id} ended {ends}"
        return ends[0]


async def wait_run(orchestrator: Orchestrator, run_id: str, timeout: float = WAIT) -> RunMessages:
    """Wait for run ``run_id`` to finish; return its messages."""
    messages = await asyncio.wait_for(orchestrator.wait_workflow_complete(run_id), timeout)
    return RunMessages(run_id, messages)


async def run_workflow(
    orchestrator: Orchestrator, workflow_id: str, timeout: float = WAIT
) -> RunMessages:
    """Run ``workflow_id`` once and return the run's messages."""
    return await wait_run(orchestrator, orchestrator.run_workflow(workflow_id), timeout)


def is_event(type_: str, task_id: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == type_ and m["data"].get("task_id") == task_id


async def wait_for_event(
    orchestrator: Orchestrator,
    run_id: str,
    predicate: Callable[[Message], bool],
    timeout: float = WAIT,
) -> Message:
    """The first message of the run (past or future) matching ``predicate``."""

    async def find() -> Message:
        async for event in orchestrator.get_run_log(run_id).follow(0):
            message = event.to_message()
            if predicate(message):
                return message
        raise AssertionError(f"run {run_id} ended without the awaited event")

    return await asyncio.wait_for(find(), timeout)


async def first_run_with(
    orchestrator: Orchestrator,
    run_ids: Iterable[str],
    predicate: Callable[[Message], bool],
    timeout: float = WAIT,
) -> str:
    """The id of the first of ``run_ids`` whose log shows an event matching ``predicate``."""
    waits = {
        asyncio.ensure_future(wait_for_event(orchestrator, run_id, predicate, timeout)): run_id
        for run_id in run_ids
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    winner = next(iter(done))
    winner.result()  # re-raise a timeout
    return waits[winner]


# --- gates: long tasks that end when the test says so -----------------------------------------


class Gate:
    """A point tasks wait at, from any process of this machine, until the test lets them on.

    A task connects to the gate's port and blocks reading one byte. Both sides block on
    sockets: no polling, no timed sleeps. :meth:`close` lets every waiting task through.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._arrivals: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="test-gate", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            self._arrivals.put(conn)

    def _next(self, timeout: float) -> socket.socket:
        try:
            return self._arrivals.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no task arrived at the gate within {timeout}s") from None

    def wait_arrived(self, count: int, timeout: float = WAIT) -> None:
        """Block until ``count`` tasks are waiting at the gate at the same time."""
        while len(self._held) < count:
            self._held.append(self._next(timeout))

    def release(self, count: int = 1, timeout: float = WAIT) -> None:
        """Let ``count`` tasks through, waiting for each to arrive if need be."""
        for _ in range(count):
            conn = self._held.pop(0) if self._held else self._next(timeout)
            # OSError: the task was cancelled meanwhile, nobody is left to let through.
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"1")

    async def arrived(self, count: int, timeout: float = WAIT) -> None:
        await asyncio.to_thread(self.wait_arrived, count, timeout)

    async def open(self, count: int = 1, timeout: float = WAIT) -> None:
        await asyncio.to_thread(self.release, count, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in _accept
        self._server.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._held.clear()
        while True:
            try:
                self._arrivals.get_nowait().close()
            except queue.Empty:
                return


# --- the engine under test --------------------------------------------------------------------


class Engine:
    """Runs async test bodies against fresh Orchestrators on one kind of executor.

    ``new_executor`` returns the executor for each orchestrator. With ``owns_executor`` the
    orchestrator shuts it down at the end; otherwise (the session's shared Ray executor) only
    the orchestrator's scheduler is stopped.
    """

    def __init__(
        self,
        name: str,
        new_executor: Callable[[], ExecutorBackend],
        *,
        owns_executor: bool,
        local_resources: NodeResources | None = None,
    ) -> None:
        self.name = name
        self._new_executor = new_executor
        self._owns_executor = owns_executor
        self._local_resources = local_resources
        self._open: list[Orchestrator] = []
        self._gates: list[Gate] = []

    def orchestrator(self, **kwargs: Any) -> Orchestrator:
        kwargs.setdefault("local_resources", self._local_resources)
        orchestrator = make_orchestrator(self._new_executor(), **kwargs)
        self._open.append(orchestrator)
        return orchestrator

    def stop(self, orchestrator: Orchestrator) -> None:
        if orchestrator in self._open:
            self._open.remove(orchestrator)
            orchestrator.cleanup(shutdown_executor=self._owns_executor)

    def run(
        self, body: Callable[[Orchestrator], Awaitable[T]], *, timeout: float = 60.0, **kwargs: Any
    ) -> T:
        """Run ``body(orchestrator)`` on a fresh event loop with a started orchestrator."""
        orchestrator = self.orchestrator(**kwargs)

        async def main() -> T:
            await orchestrator.start_monitor()
            try:
                return await asyncio.wait_for(body(orchestrator), timeout)
            finally:
                self.stop(orchestrator)

        return asyncio.run(main())

    def gate(self) -> Gate:
        gate = Gate()
        self._gates.append(gate)
        return gate

    def close(self) -> None:
        for orchestrator in list(self._open):
            self.stop(orchestrator)
        for gate in self._gates:
            gate.close()


# --- task functions ---------------------------------------------------------------------------
# Each takes the dict of its inputs and returns a dict of outputs ("out" unless said).


def const(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": p["value"]}


def add_one(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": p["x"] + 1}


def times_ten(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": p["x"] * 10}


def total(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": sum(p.values())}


def pair(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": [p["a"], p["b"]]}


def type_name(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": type(p["x"]).__name__}


def not_json(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": (1, 2), "blob": b"\x00\x01", "keys": {1: "one"}}


def fail(p: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"cannot handle x={p['x']}")


def timed_sleep(p: dict[str, Any]) -> dict[str, Any]:
    """Simulated work of ``seconds``; reports when it started and ended."""
    start = time.time()
    time.sleep(p["seconds"])
    return {"out": p.get("value"), "start": start, "end": time.time()}


def crash_once(p: dict[str, Any]) -> dict[str, Any]:
    """Kills its whole process (a Ray task host) the first time, succeeds the second:
    returns the pids of both attempts."""
    import os
    from pathlib import Path

    marker = Path(p["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return {"out": (int(marker.read_text()), os.getpid())}


def pass_gate(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.settimeout(4 * WAIT)
        conn.recv(1)


def gated(p: dict[str, Any]) -> dict[str, Any]:
    """Waits at the gate on port ``gate``; returns a token unique to this call."""
    start = time.time()
    pass_gate(p["gate"])
    return {"out": uuid.uuid4().hex, "start": start, "end": time.time()}


def batch_double(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batchable: one call gets every input of the batch; tags results with the call."""
    call = uuid.uuid4().hex
    return [{"out": p["x"] * 2, "call": call, "size": len(inputs)} for p in inputs]


def greet(name: str, punctuation: str = "!") -> str:
    """A LangGraph-style node: called with positional and keyword arguments."""
    return f"hello {name}{punctuation}"


def refuse(name: str) -> str:
    raise KeyError(name)
