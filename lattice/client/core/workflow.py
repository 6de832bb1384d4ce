"""LatticeWorkflow: build a DAG from task functions, run it, read its results."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from lattice.client.core.code import serialize_function
from lattice.client.core.decorator import TaskFunction
from lattice.client.core.models import LatticeTask, RunOutputs, TaskOutput
from lattice.client.core.results import resolve_message, resolver
from lattice.client.core.transport import Transport
from lattice.exceptions import (
    LatticeConnectionError,
    LatticeInputError,
    LatticeTimeoutError,
    RunCancelledError,
    TaskErrorInfo,
    TaskFailedError,
)
from lattice.serialization import decode_value, encode_value
from lattice.vocabulary import parse_priority


def _input_params(inputs: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(inputs.items(), start=1):
        if isinstance(value, TaskOutput):
            params[str(i)] = {
                "key": key,
                "input_schema": "from_task",
                "data_type": "any",
                "value": value.ref,
            }
        elif isinstance(value, LatticeTask):
            raise LatticeInputError(
                f"input {key!r} is a task; pass one of its outputs, e.g. task.outputs[{next(iter(value.output_keys), 'key')!r}]"
            )
        else:
            params[str(i)] = {
                "key": key,
                "input_schema": "from_user",
                "data_type": type(value).__name__,
                "value": encode_value(value),
            }
    return {"input_params": params}


def decode_message(message: dict[str, Any]) -> dict[str, Any]:
    """Turn wire results in a run message back into Python values."""
    data = message.get("data") or {}
    if message.get("type") == "finish_task" and "result" in data:
        data = {**data, "result": decode_value(data["result"])}
        return {**message, "data": data}
    return message


def raise_for_error(task_name: str, error: dict[str, Any]) -> None:
    raise TaskFailedError(task_name, TaskErrorInfo.from_dict(error))


#: a flush is sent once this many tasks are buffered, or this many bytes of their code
FLUSH_TASKS = 500
FLUSH_BYTES = 8 * 1024 * 1024


class LatticeWorkflow:
    """A workflow on the server, built from task functions.

    ``add_task`` and ``add_edge`` are checked here and buffered; the buffer goes to the server
    in one ``POST /add_tasks`` (all or nothing) on :meth:`run`, on :meth:`flush`, or once it
    holds :data:`FLUSH_TASKS` tasks or :data:`FLUSH_BYTES` of code. What only the server can
    check (a cycle through ``add_edge``, a reference to an output a plain function does not
    declare) is raised by that flush.
    """

    def __init__(self, transport: Transport, workflow_id: str) -> None:
        self._transport = transport
        self.workflow_id = workflow_id
        self._tasks: dict[str, LatticeTask] = {}
        #: ``/add_tasks`` bodies of the tasks not sent yet, and the edges added after them
        self._pending: list[dict[str, Any]] = []
        self._pending_edges: list[dict[str, str]] = []
        self._pending_bytes = 0

    def __repr__(self) -> str:
        return f"<LatticeWorkflow {self.workflow_id} tasks={len(self._tasks)}>"

    # --- building ---------------------------------------------------------------------------

    def add_task(
        self,
        task_func: TaskFunction | Callable[..., Any],
        inputs: dict[str, Any] | None = None,
        task_name: str | None = None,
        priority: int | str | None = None,
    ) -> LatticeTask:
        """Add ``task_func`` with ``inputs`` (plain values, or other tasks' ``.outputs[key]``).
        ``priority`` (a level or its name) overrides the one ``@task`` declared.

        Every input the task declares must be given, and nothing else. Raises
        LatticeInputError naming the problem; on any error the workflow is unchanged. The task
        reaches the server with the next flush (see the class docstring).
        """
        inputs = dict(inputs or {})
        if isinstance(task_func, TaskFunction):
            meta = task_func.metadata
            func: Callable[..., Any] = task_func.func
            declared, outputs = meta.inputs, meta.outputs
            missing = [k for k in declared if k not in inputs]
            unknown = [k for k in inputs if k not in declared]
            if missing or unknown:
                raise LatticeInputError(
                    f"task {meta.func_name} declares inputs {list(declared)}; "
                    + (f"missing {missing}" if missing else "")
                    + ("; " if missing and unknown else "")
                    + (f"unknown {unknown}" if unknown else "")
                )
        else:
            meta = None
            func, outputs = task_func, ()
        for value in inputs.values():
            if isinstance(value, TaskOutput) and value.task_id not in self._tasks:
                raise LatticeInputError(
                    f"input refers to task {value.task_id}, which is not in this workflow"
                )
        level = parse_priority(priority) if priority is not None else None
        if level is None and meta is not None:
            level = meta.priority
        name = str(task_name or getattr(func, "__name__", "task"))
        code_str, code_ser = serialize_function(func)
        task_id = str(uuid.uuid4())
        self._pending.append(
            {
                "task_id": task_id,
                "task_name": name,
                "code_str": code_str,
                "code_ser": code_ser,
                "task_input": _input_params(inputs),
                "task_output": {
                    "output_params": {
                        str(i): {"key": k, "data_type": "any"} for i, k in enumerate(outputs, 1)
                    }
                },
                "resources": meta.resources if meta else None,
                "batch_config": meta.batch_config if meta else None,
                "priority": level,
                "sandbox": meta.sandbox if meta else None,
            }
        )
        self._pending_bytes += len(code_ser) + len(code_str or "")
        task = LatticeTask(task_id, name, self.workflow_id, tuple(outputs))
        self._tasks[task_id] = task
        if len(self._pending) >= FLUSH_TASKS or self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        return task

    def add_edge(self, source_task: LatticeTask, target_task: LatticeTask) -> None:
        """Make ``target_task`` wait for ``source_task`` (an order without data). Sent with
        the next flush, which raises LatticeInputError naming the cycle if it closes one."""
        self._pending_edges.append(
            {"source_task_id": source_task.task_id, "target_task_id": target_task.task_id}
        )

    def flush(self) -> None:
        """Send the tasks and edges added since the last flush, all in one request.

        If the server refuses them (a cycle, a bad reference, ...), none of them is added:
        they are dropped here too and the error names the task. If the server cannot be
        reached, they stay buffered and the next flush sends them again.
        """
        if not self._pending and not self._pending_edges:
            return
        tasks, edges = self._pending, self._pending_edges
        body = {"workflow_id": self.workflow_id, "tasks": tasks, "edges": edges}
        try:
            self._transport.post("/add_tasks", body)
        except LatticeInputError as exc:
            message = str(exc)
            for task in self._tasks.values():
                message = message.replace(task.task_id, f"{task.task_id} ({task.task_name})")
            for pending in tasks:
                del self._tasks[pending["task_id"]]
            self._pending, self._pending_edges, self._pending_bytes = [], [], 0
            raise type(exc)(
                f"{message}; none of the {len(tasks)} task(s) and {len(edges)} edge(s) "
                "added since the last flush were added"
            ) from exc
        self._pending, self._pending_edges, self._pending_bytes = [], [], 0

    @property
    def tasks(self) -> list[LatticeTask]:
        return list(self._tasks.values())

    # --- running ----------------------------------------------------------------------------

    def run(self, priority: int | str | None = None) -> str:
        """Send what is buffered (:meth:`flush`), start a run; return its run id at once.

        ``priority`` (``0``-``4`` or ``"critical"``, ``"high"``, ``"normal"``, ``"low"``,
        ``"idle"``) is the priority of every task of the run that sets none of its own.

        Raises:
            LatticeInputError: an unknown priority, before anything is sent.
        """
        body: dict[str, Any] = {"workflow_id": self.workflow_id}
        if priority is not None:
            body["priority"] = parse_priority(priority)
        self.flush()
        return str(self._transport.post("/run_workflow", body)["run_id"])

    def cancel(self, run_id: str) -> None:
        self._transport.post(f"/runs/{run_id}/cancel")

    def stream(
        self, run_id: str, timeout: float | None = None, from_seq: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Yield the run's messages (spec/002 §5.5) as they happen, results decoded; a large
        output value (see docs/api.md) is fetched as its ``finish_task`` arrives."""
        resolve = resolver(self._transport, run_id)
        for message in self._messages(run_id, timeout, from_seq):
            yield resolve_message(resolve, message)

    def _messages(
        self, run_id: str, timeout: float | None, from_seq: int = 0
    ) -> Iterator[dict[str, Any]]:
        """The run's messages from ``from_seq`` until its ``finish_workflow``, following the
        stream across lost connections and head restarts: each reconnection asks for the
        messages after the last one seen (the transport's ReconnectPolicy bounds how often).
        Raises LatticeConnectionError naming the run and the URL if the head stays away."""
        policy = self._transport.reconnect
        next_seq, failures = from_seq, 0
        while True:
            path = f"/get_workflow_res/{self.workflow_id}/{run_id}?from_seq={next_seq}"
            try:
                for message in self._transport.stream(path, timeout=timeout):
                    failures = 0
                    next_seq = int(message.get("seq", next_seq)) + 1
                    yield decode_message(message)
                    if message.get("type") == "finish_workflow":
                        return
                broke = "the head closed the stream before the run finished"
            except LatticeTimeoutError:
                raise
            except LatticeConnectionError as exc:
                broke = str(exc)
            failures += 1
            if failures > policy.attempts:
                raise LatticeConnectionError(
                    f"lost run {run_id} at {self._transport.server_url}: the head did not come "
                    f"back after {policy.attempts} reconnections from seq {next_seq} ({broke})"
                )
            # Backing off before asking again is the point here: the head is away.
            time.sleep(policy.delay(failures))

    def get_results(
        self, run_id: str, verbose: bool = True, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Every message of the run until ``finish_workflow``; ``timeout`` bounds each wait."""
        messages = []
        names = {t.task_id: t.task_name for t in self._tasks.values()}
        for message in self.stream(run_id, timeout=timeout):
            messages.append(message)
            if verbose:
                print(_describe(message, names))
        return messages

    def get_outputs(self, run_id: str, timeout: float | None = None) -> RunOutputs:
        """Each task's outputs once the run ends: every one, or an error, never some.
        Raises TaskFailedError (with the remote traceback) for the first task that failed,
        RunCancelledError if it was cancelled, LatticeConnectionError if the head went away
        and did not come back (see ReconnectPolicy). A large output value is fetched when
        its task's outputs are first read."""
        outputs = RunOutputs(resolver(self._transport, run_id))
        failure: tuple[str, dict[str, Any]] | None = None
        final: dict[str, Any] = {}
        for message in self._messages(run_id, timeout):
            data = message["data"]
            if message["type"] == "finish_task":
                outputs[data["task_id"]] = data["result"]
            elif message["type"] == "task_exception" and failure is None:
                failure = (data.get("task_name") or data["task_id"], data["error"])
            elif message["type"] == "finish_workflow":
                final = data
        if failure is not None:
            raise_for_error(*failure)
        if not final:
            raise LatticeConnectionError(f"the stream of run {run_id} ended before the run did")
        if final.get("status") == "cancelled":
            raise RunCancelledError(
                f"run {run_id} was cancelled: {final.get('reason', 'by request')}"
            )
        return outputs


def _describe(message: dict[str, Any], names: dict[str, str]) -> str:
    data = message.get("data", {})
    kind = message.get("type")
    name = data.get("task_name") or names.get(data.get("task_id", ""), data.get("task_id"))
    if kind == "start_task":
        return f"[start]   {name} on {data.get('node_id')} ({data.get('node_ip')})"
    if kind == "finish_task":
        return f"[finish]  {name}: {data.get('result')!r}"
    if kind == "task_exception":
        err = data.get("error", {})
        return f"[failed]  {name}: {err.get('type')}: {err.get('message')}"
    if kind == "task_skipped":
        return f"[skipped] {name}: {data.get('reason')}"
    if kind == "task_cancelled":
        return f"[cancel]  {name}"
    if kind == "finish_workflow":
        return f"[run]     {data.get('status')} {data.get('tasks')}"
    return f"[{kind}] {data}"
