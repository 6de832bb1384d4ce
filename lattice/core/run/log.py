"""A run is its event log (DESIGN decision 2).

Every event of a run is appended with a sequence number; WebSocket subscribers replay the log
from any sequence and then follow it, so a late or reconnecting client misses nothing. The log
folds each event into its :class:`~lattice.core.run.state.RunState` as it appends it: a run's
status and results are read from that fold, never kept a second time.

Logs live on the server's event loop thread (no locks). The store is an interface so a
persistent store can replace the in-memory one.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from lattice.core.run.events import RunEvent, RunStatus
from lattice.core.run.state import RunState
from lattice.exceptions import RunNotFoundError


@dataclass(frozen=True)
class LoggedEvent:
    """An event with its place in the run's log."""

    seq: int
    event: RunEvent

    @property
    def kind(self) -> str:
        return self.event.kind

    def to_message(self) -> dict[str, Any]:
        """The WebSocket message (spec/002 §5.5)."""
        return {"type": self.event.kind, "data": self.event.to_wire(), "seq": self.seq}


class RunLog:
    """One run's append-only log and the state folded from it. Event loop thread only."""

    def __init__(self, run_id: str, workflow_id: str, tasks: Iterable[tuple[str, str]]) -> None:
        """``tasks``: ``(task_id, task_name)`` of every task of the run, in workflow order."""
        self.state = RunState(run_id, workflow_id, tasks)
        self._events: list[LoggedEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def workflow_id(self) -> str:
        return self.state.workflow_id

    def append(self, event: RunEvent) -> LoggedEvent:
        """Fold ``event`` into the state and log it. Raises InvalidTransition (and logs
        nothing) for an event the state cannot take, e.g. anything after ``finish_workflow``."""
        self.state.apply(event)
        logged = LoggedEvent(len(self._events), event)
        self._events.append(logged)
        self._wake()
        return logged

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        return self.state.finished is not None

    @property
    def status(self) -> RunStatus:
        return self.state.status

    def __len__(self) -> int:
        return len(self._events)

    def events(self, from_seq: int = 0) -> list[LoggedEvent]:
        return self._events[max(0, from_seq) :]

    async def follow(self, from_seq: int = 0) -> AsyncIterator[LoggedEvent]:
        """Yield every event from ``from_seq`` on, waiting for new ones until the run ends."""
        i = max(0, from_seq)
        while True:
            while i < len(self._events):
                yield self._events[i]
                i += 1
            if self.closed:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)

    async def wait_closed(self) -> None:
        async for _ in self.follow(len(self._events)):
            pass

    def summary(self) -> dict[str, Any]:
        """Status of the run and of each task, with results and errors (``GET /runs/{id}``)."""
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": self.status.value,
            "events": len(self._events),
            "tasks": self.state.view(),
        }


class EventStore(ABC):
    """Where run logs live. The in-memory store is the default; a persistent one may follow."""

    @abstractmethod
    def create(self, run_id: str, workflow_id: str, tasks: Iterable[tuple[str, str]]) -> RunLog: ...

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

    def create(self, run_id: str, workflow_id: str, tasks: Iterable[tuple[str, str]]) -> RunLog:
        log = self._logs[run_id] = RunLog(run_id, workflow_id, tasks)
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
