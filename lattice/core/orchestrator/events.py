"""A run is its event log (DESIGN decision 2).

Every change of a run is appended with a sequence number; WebSocket subscribers replay the log
from any sequence and then follow it, so a late or reconnecting client misses nothing. A run's
status and results are folded from its log, never kept twice.

Logs live on the server's event loop thread (no locks). The store is an interface so a
persistent store can replace the in-memory one.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import RunNotFoundError

# Event types on the wire (spec/002 §5.5 plus the ones a user needs to know nothing is lost).
START_TASK = "start_task"
FINISH_TASK = "finish_task"
TASK_EXCEPTION = "task_exception"
TASK_SKIPPED = "task_skipped"
TASK_CANCELLED = "task_cancelled"
FINISH_WORKFLOW = "finish_workflow"

RUNNING, COMPLETED, FAILED, CANCELLED = "running", "completed", "failed", "cancelled"


@dataclass(frozen=True)
class RunEvent:
    seq: int
    type: str
    data: dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data, "seq": self.seq}


class RunLog:
    """One run's append-only log. Use from the event loop thread only."""

    def __init__(self, run_id: str, workflow_id: str, task_ids: list[str]) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.task_ids = task_ids
        self._events: list[RunEvent] = []
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def append(self, type_: str, data: dict[str, Any]) -> RunEvent:
        if self._closed:
            raise RuntimeError(f"run {self.run_id} is finished; its log is closed")
        event = RunEvent(len(self._events), type_, data)
        self._events.append(event)
        if type_ == FINISH_WORKFLOW:
            self._closed = True
        self._wake()
        return event

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._events)

    def events(self, from_seq: int = 0) -> list[RunEvent]:
        return self._events[max(0, from_seq) :]

    async def follow(self, from_seq: int = 0) -> AsyncIterator[RunEvent]:
        """Yield every event from ``from_seq`` on, waiting for new ones until the run ends."""
        i = max(0, from_seq)
        while True:
            while i < len(self._events):
                yield self._events[i]
                i += 1
            if self._closed:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)

    async def wait_closed(self) -> None:
        async for _ in self.follow(len(self._events)):
            pass

    # --- derived state ----------------------------------------------------------------------

    @property
    def status(self) -> str:
        if not self._closed:
            return RUNNING
        return str(self._events[-1].data.get("status", COMPLETED))

    def summary(self) -> dict[str, Any]:
        """Status of the run and of each task, with results and errors, folded from the log."""
        tasks: dict[str, dict[str, Any]] = {tid: {"status": "pending"} for tid in self.task_ids}
        for event in self._events:
            tid = event.data.get("task_id")
            if tid is None:
                continue
            entry = tasks.setdefault(tid, {})
            if event.type == START_TASK:
                entry.update(status="running", node_id=event.data.get("node_id"))
            elif event.type == FINISH_TASK:
                entry.update(status="completed", result=event.data.get("result"))
            elif event.type == TASK_EXCEPTION:
                entry.update(status="failed", error=event.data.get("error"))
            elif event.type == TASK_SKIPPED:
                entry.update(status="skipped", reason=event.data.get("reason"))
            elif event.type == TASK_CANCELLED:
                entry.update(status="cancelled")
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": self.status,
            "events": len(self._events),
            "tasks": tasks,
        }


class EventStore(ABC):
    """Where run logs live. The in-memory store is the default; a persistent one may follow."""

    @abstractmethod
    def create(self, run_id: str, workflow_id: str, task_ids: list[str]) -> RunLog: ...

    @abstractmethod
    def get(self, run_id: str) -> RunLog:
        """The run's log; RunNotFoundError if unknown or retired."""

    @abstractmethod
    def finished(self, run_id: str) -> None:
        """The run ended: it now counts against the retention limit."""

    @abstractmethod
    def retire(self, run_id: str) -> None:
        """Forget a finished run and its results."""

    @abstractmethod
    def run_ids(self) -> list[str]: ...


class InMemoryEventStore(EventStore):
    """Keeps every running run and the ``max_finished`` most recently finished ones.

    Retention: when a run finishes beyond that number, the oldest finished run is retired;
    clients read results before then (or raise the limit). Running runs are never retired.
    """

    def __init__(self, max_finished: int = 1000) -> None:
        self._logs: dict[str, RunLog] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._max_finished = max_finished

    def create(self, run_id: str, workflow_id: str, task_ids: list[str]) -> RunLog:
        log = self._logs[run_id] = RunLog(run_id, workflow_id, task_ids)
        return log

    def get(self, run_id: str) -> RunLog:
        try:
            return self._logs[run_id]
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def finished(self, run_id: str) -> None:
        self._finished[run_id] = None
        while len(self._finished) > self._max_finished:
            oldest, _ = self._finished.popitem(last=False)
            self._logs.pop(oldest, None)

    def retire(self, run_id: str) -> None:
        log = self.get(run_id)
        if not log.closed:
            raise RuntimeError(f"run {run_id} is still running")
        self._finished.pop(run_id, None)
        del self._logs[run_id]

    def run_ids(self) -> list[str]:
        return list(self._logs)
