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
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lattice.core.run.events import RunEvent, RunStatus
from lattice.core.run.state import RunState
from lattice.exceptions import RunNotFoundError

if TYPE_CHECKING:
    from lattice.core.store.records import DefinitionRecord, StoredRun


@dataclass(frozen=True)
class LoggedEvent:
    """An event with its place in the run's log."""

    seq: int
    event: RunEvent
    #: when the log took it (seconds since the epoch); None for an event read back from a
    #: store, which keeps no times (the dashboard shows no times for those)
    at: float | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return self.event.kind

    def to_message(self) -> dict[str, Any]:
        """The WebSocket message (spec/002 §5.5)."""
        return {"type": self.event.kind, "data": self.event.to_wire(), "seq": self.seq}


class RunLog:
    """One run's append-only log and the state folded from it. Event loop thread only."""

    def __init__(
        self,
        run_id: str,
        workflow_id: str,
        tasks: Iterable[tuple[str, str]],
        sink: Callable[[LoggedEvent], None] | None = None,
    ) -> None:
        """``tasks``: ``(task_id, task_name)`` of every task of the run, in workflow order;
        ``sink``: called with each event appended, after the fold took it (a store's write);
        with a sink, followers see an event once the store calls :meth:`mark_durable`."""
        self.state = RunState(run_id, workflow_id, tasks)
        self._events: list[LoggedEvent] = []
        self._waiter: asyncio.Future[None] | None = None
        self._sink = sink
        self._durable: int | None = None if sink is None else 0
        #: the head is stopping and the run stays unfinished (it resumes after a restart)
        self.released = False
        #: when this log was made (the run accepted, or read back after a restart)
        self.created_at = time.time()

    def load(self, events: Iterable[RunEvent]) -> None:
        """Fold and keep events read back from a store (not written again)."""
        for event in events:
            self.state.apply(event)
            self._events.append(LoggedEvent(len(self._events), event))
        if self._durable is not None:
            self._durable = len(self._events)

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
        logged = LoggedEvent(len(self._events), event, time.time())
        self._events.append(logged)
        if self._sink is not None:
            self._sink(logged)
        self._wake()
        return logged

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def release(self) -> None:
        """End every follower now, the run unfinished: the head is stopping, and the run will
        resume when a head opens the store again (its followers reconnect then)."""
        self.released = True
        self._wake()

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

    @property
    def visible(self) -> int:
        """How many events followers may see: all of them, or with a durable store only
        those committed (a client never sees an event a restart could take back, so the
        sequence numbers it saw stay valid across the restart)."""
        return len(self._events) if self._durable is None else self._durable

    def mark_durable(self, count: int) -> None:
        """The store committed the first ``count`` events (event loop thread)."""
        if self._durable is not None and count > self._durable:
            self._durable = count
            self._wake()

    async def follow(self, from_seq: int = 0) -> AsyncIterator[LoggedEvent]:
        """Yield every event from ``from_seq`` on, waiting for new ones until the run ends."""
        i = max(0, from_seq)
        while True:
            while i < self.visible:
                yield self._events[i]
                i += 1
            if (self.closed and self.visible == len(self._events)) or self.released:
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
    """Where workflows and run logs live (DESIGN decision 10).

    A store keeps workflow definitions, each run's accepted record (its definition when it
    was accepted), every event of every run with its sequence number, and so the outputs of
    finished tasks (they are in their ``finish_task`` events). A persistent store reads all of
    it back when it opens, so a restarted head knows its workflows and runs
    (:meth:`workflows`, :meth:`unfinished_runs`) and resumes the unfinished ones.
    Event loop thread only; a store may write on a thread of its own.
    """

    @abstractmethod
    def create(
        self,
        run_id: str,
        workflow_id: str,
        tasks: Iterable[tuple[str, str]],
        definition: DefinitionRecord | None = None,
    ) -> RunLog:
        """Record a run as accepted and return its (empty) log. A persistent store returns
        only once the accepted record is durable: nothing of the run is dispatched before."""

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

    @abstractmethod
    def save_workflow(self, record: DefinitionRecord) -> None:
        """Keep a workflow's definition as it stands now (replacing the one kept before)."""

    @abstractmethod
    def delete_workflow(self, workflow_id: str) -> None:
        """Forget a workflow's definition (its runs are retired one by one, before)."""

    @abstractmethod
    def workflows(self) -> list[DefinitionRecord]:
        """Every workflow definition kept, in the order they were first saved."""

    def unfinished_runs(self) -> list[StoredRun]:
        """Runs read back when the store opened whose log has no ``finish_workflow``: a
        restarted head resumes them. Their logs are already loaded (``get`` knows them)."""
        return []

    @property
    def durable(self) -> bool:
        """Whether what it keeps outlives the process (an unfinished run then resumes)."""
        return False

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:  # noqa: B027
        """The event loop its logs live on (a store that commits on a thread of its own tells
        them there what is durable)."""

    def flush(self) -> None:  # noqa: B027 - nothing to do for a store that keeps nothing
        """Return once everything handed to the store so far is durable."""

    def close(self) -> None:  # noqa: B027
        """Make everything durable and let go of the store's resources."""


class InMemoryEventStore(EventStore):
    """Keeps every running run and the ``max_finished`` most recently finished ones, and every
    workflow definition, until the process ends.

    Retention: when a run finishes beyond that number, the oldest finished run is retired;
    so is every finished run that finished more than ``max_age`` seconds ago (checked as
    runs finish). Clients read results before then (or raise the limits). Running runs are
    never retired. ``clock``: seconds since the epoch (tests give their own).
    """

    def __init__(
        self,
        max_finished: int = 1000,
        max_age: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._logs: dict[str, RunLog] = {}
        #: finished run -> when it finished, oldest first
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._max_finished = max_finished
        self._max_age = max_age
        self._clock = clock
        self._workflows: dict[str, DefinitionRecord] = {}

    def create(
        self,
        run_id: str,
        workflow_id: str,
        tasks: Iterable[tuple[str, str]],
        definition: DefinitionRecord | None = None,
    ) -> RunLog:
        log = self._logs[run_id] = RunLog(run_id, workflow_id, tasks)
        return log

    def get(self, run_id: str) -> RunLog:
        try:
            return self._logs[run_id]
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def finished(self, run_id: str) -> None:
        self._finished[run_id] = self._clock()
        self._sweep()

    def _sweep(self) -> None:
        while len(self._finished) > self._max_finished:
            oldest, _ = self._finished.popitem(last=False)
            self._drop(oldest)
        if self._max_age is None:
            return
        cutoff = self._clock() - self._max_age
        while self._finished:
            oldest, at = next(iter(self._finished.items()))
            if at >= cutoff:
                break
            del self._finished[oldest]
            self._drop(oldest)

    def retire(self, run_id: str) -> None:
        log = self.get(run_id)
        if not log.closed:
            raise RuntimeError(f"run {run_id} is still running")
        self._finished.pop(run_id, None)
        self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        """Forget a finished run (a persistent store deletes it too)."""
        self._logs.pop(run_id, None)

    def run_ids(self) -> list[str]:
        return list(self._logs)

    def save_workflow(self, record: DefinitionRecord) -> None:
        self._workflows[record.workflow_id] = record

    def delete_workflow(self, workflow_id: str) -> None:
        self._workflows.pop(workflow_id, None)

    def workflows(self) -> list[DefinitionRecord]:
        return list(self._workflows.values())
