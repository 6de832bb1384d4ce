"""The Scheduler thread: blocks on its inbox, asks the core what to do, does it.

Messages from the orchestrator (run, cancel, workers) and from executor done-callbacks
(``TASK_DONE``) arrive in one inbox; the only timed wait is until the next batch deadline.
After each wake-up the thread drains the inbox, hands every message to the
:class:`~lattice.core.scheduler.core.SchedulerCore`, lets it dispatch, and performs the
commands it returns: it submits to and cancels on the executor, sends run events to the
orchestrator, counts them in the metrics and publishes the nodes. Every decision is the
core's; what this thread adds is I/O: asking the executor about the cluster before the core
decides about a lost task or a new worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lattice.core.observer import EngineObserver, NodeGauge
from lattice.core.resource.manager import ResourceManager
from lattice.core.resource.node import NodeStatus
from lattice.core.run.events import RunEvent, TaskCancelled, TaskFailed, TaskFinished, TaskStarted
from lattice.core.scheduler.commands import (
    AwaitOutput,
    Cancel,
    Command,
    Emit,
    ReleaseNode,
    Stop,
    Submit,
)
from lattice.core.scheduler.core import SchedulerCore
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    NodesObservedData,
    QueueQueryData,
    StartWorkerData,
    SubmitRefusedData,
    SubmittedData,
    TaskDoneData,
    event_message,
)
from lattice.core.scheduler.submission import encode_outcome
from lattice.exceptions import LatticeWorldError, TaskErrorInfo
from lattice.executor.base import (
    ExecutorBackend,
    PendingOutput,
    TaskHandle,
    TaskOutcome,
    TaskSubmission,
)

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        message_bus: MessageBus,
        executor: ExecutorBackend,
        resource_manager: ResourceManager,
        observer: EngineObserver | None = None,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
        priority_aging: float | None = None,
    ) -> None:
        self._bus = message_bus
        self._executor = executor
        self._rm = resource_manager
        self._observer = observer or EngineObserver()
        self._clock = clock
        self.core = SchedulerCore(
            resource_manager,
            max_attempts=max_attempts,
            pipelines=executor.pipelines,
            priority_aging=priority_aging,
        )
        #: the executor's handle of every submission it took, by key
        self._handles: dict[str, TaskHandle] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: the nodes as the API shows them, republished by the scheduler thread on change
        self.nodes_view: list[dict[str, Any]] = resource_manager.snapshot()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._executor.on_nodes_changed(
            lambda: self._bus.send_to_scheduler(Message(MessageType.NODES_CHANGED))
        )
        self._thread = threading.Thread(
            target=self._run_loop, name="lattice-scheduler", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run_loop(self) -> None:
        self._bus.signal_ready()
        while not self._stopping:
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            message = self._bus.receive_in_scheduler(timeout)
            messages = [message] if message is not None else []
            messages.extend(self._bus.drain_in_scheduler())
            for msg in messages:
                self.handle(msg)
            self._perform(self.core.dispatch(self._clock()))
            self._publish_gauges()

    def handle(self, message: Message) -> None:
        """Hand one inbox message to the core (after asking the executor what the core needs
        to know about the cluster) and perform what it decides."""
        if isinstance(message.data, QueueQueryData):
            message.data.reply(self.core.queue_view(self._clock()))
            return
        for msg in self._with_observations(message):
            self._perform(self.core.handle(msg, self._clock()))
        if isinstance(message.data, TaskDoneData):
            # Its report is in: nothing will cancel it or wait for its output any more.
            self._handles.pop(message.data.key, None)

    def _with_observations(self, message: Message) -> list[Message]:
        data = message.data
        if message.message_type is MessageType.NODES_CHANGED:
            return [self._observe_nodes()]
        if isinstance(data, TaskDoneData) and data.outcome.lost:
            # The executor reports a task lost with its node about when the cluster declares
            # the node dead, a moment before the watcher says so. Look now, so that the task
            # is not placed on the dead node again (and lost once more).
            return [self._observe_nodes(), message]
        if isinstance(data, StartWorkerData):
            try:
                alive = self._executor.alive_node_ids()
            except LatticeWorldError:
                log.warning("cannot check that worker %s is in the cluster", data.node_id)
                alive = None
            in_cluster = None if alive is None else data.node_id in alive
            return [Message(message.message_type, replace(data, in_cluster=in_cluster))]
        return [message]

    def _observe_nodes(self) -> Message:
        try:
            alive = self._executor.alive_node_ids()
            new: tuple[dict[str, Any], ...] = ()
            if alive is not None:
                unknown = alive - self.core.known_node_ids()
                if unknown:
                    nodes = self._executor.cluster_nodes()
                    new = tuple(n for n in nodes if n.get("NodeID") in unknown)
        except LatticeWorldError:
            log.warning("cannot read cluster membership; the node watcher will", exc_info=True)
            alive, new = None, ()
        return Message(
            MessageType.NODES_OBSERVED,
            NodesObservedData(None if alive is None else frozenset(alive), new),
        )

    # --- commands ---------------------------------------------------------------------------

    def _perform(self, commands: list[Command]) -> None:
        todo = deque(commands)
        while todo:
            command = todo.popleft()
            if isinstance(command, Submit):
                # The core hears how it went before anything else happens.
                todo.extendleft(reversed(self._submit(command.submission)))
            elif isinstance(command, Emit):
                self._emit(command.event)
            elif isinstance(command, Cancel):
                handle = self._handles.pop(command.key, None)
                if handle is not None:
                    self._executor.cancel(handle)
            elif isinstance(command, ReleaseNode):
                self._executor.release_node(command.node_id)
            elif isinstance(command, Stop):
                self._stopping = True

    def _submit(self, submission: TaskSubmission) -> list[Command]:
        key = submission.task_key
        try:
            handle = self._executor.submit(self._with_handles(submission))
        except Exception as exc:
            log.exception("executor refused task %s", key)
            error = TaskErrorInfo.framework(
                type(exc).__name__, f"executor could not run the task: {exc}"
            )
            message = Message(MessageType.SUBMIT_REFUSED, SubmitRefusedData(key, error))
            return self.core.handle(message, self._clock())
        self._handles[key] = handle
        handle.add_done_callback(self._reporter(submission))
        return self.core.handle(Message(MessageType.SUBMITTED, SubmittedData(key)), self._clock())

    def _with_handles(self, submission: TaskSubmission) -> TaskSubmission:
        inputs = submission.upstream_inputs
        if not isinstance(inputs, dict) or not any(
            isinstance(v, AwaitOutput) for v in inputs.values()
        ):
            return submission
        resolved = {
            k: PendingOutput(self._handles[v.submission_key], v.key)
            if isinstance(v, AwaitOutput)
            else v
            for k, v in inputs.items()
        }
        return replace(submission, upstream_inputs=resolved)

    def _reporter(self, submission: TaskSubmission) -> Callable[[TaskOutcome], None]:
        """The done-callback of ``submission``: runs on the executor's thread."""
        key, kind, name = submission.task_key, submission.kind, submission.task_name

        def done(outcome: TaskOutcome) -> None:
            outcome, encoded = encode_outcome(kind, name, outcome)
            self._bus.send_to_scheduler(
                Message(MessageType.TASK_DONE, TaskDoneData(key, outcome, encoded))
            )

        return done

    def _emit(self, event: RunEvent) -> None:
        if isinstance(event, TaskStarted):
            self._observer.task_submitted(event.task_name, event.node_id, event.queued_for)
        elif isinstance(event, TaskFinished):
            self._observer.task_completed(event.task_name, event.node_id, event.duration)
        elif isinstance(event, TaskFailed):
            self._observer.task_failed(event.task_name, event.node_id, event.duration)
        elif isinstance(event, TaskCancelled):
            self._observer.task_cancelled(event.task_name, event.node_id)
        self._bus.send_from_scheduler(event_message(event))

    # --- gauges -----------------------------------------------------------------------------

    def _publish_gauges(self) -> None:
        if not self.core.dirty:
            return
        self.core.dirty = False
        # A fresh list, swapped in whole: readers on other threads never see it change.
        self.nodes_view = self._rm.snapshot()
        self._observer.pending_changed(self.core.queued_count())
        self._observer.nodes_changed(
            [
                NodeGauge(
                    n.node_id,
                    n.available_resources.cpu_count,
                    n.available_resources.memory_bytes,
                    {
                        g.gpu_id: g.gpu_memory_available
                        for g in n.available_resources.gpu_resources.values()
                    },
                    n.status is not NodeStatus.DEAD,
                )
                for n in self._rm.nodes()
            ]
        )
