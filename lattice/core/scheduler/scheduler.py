"""The Scheduler thread: takes ready tasks, places them, submits them, reports back.

It blocks on one inbox. Messages from the orchestrator (run, cancel, workers) and from
executor done-callbacks (``TASK_DONE``) both arrive there; the only timed wait is until the
next batch deadline. After each wake-up it drains the inbox, releases due batches and
dispatches everything that fits.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lattice.core.observer import EngineObserver, NodeGauge
from lattice.core.resource.manager import ResourceManager
from lattice.core.resource.node import NodeStatus, SelectedNode
from lattice.core.runtime.task import BaseTaskRuntime, CodeTaskRuntime, TaskStatus
from lattice.core.runtime.workflow import WorkflowRuntimeManager
from lattice.core.scheduler.batch_collector import BatchCollector
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    RunControlData,
    RunTaskData,
    RunTasksData,
    StartWorkerData,
    StopWorkerData,
    TaskCancelledData,
    TaskDoneData,
    TaskFailedData,
    TaskFinishedData,
    TaskStartedData,
)
from lattice.core.scheduler.pending import PendingItem, PendingQueue, Shape
from lattice.core.scheduler.submission import build_submission, encode_outcome, split_outcome
from lattice.core.scheduler.waiting import WaitingTasks
from lattice.exceptions import (
    InvalidReferenceError,
    LatticeWorldError,
    NodeNotFoundError,
    TaskErrorInfo,
)
from lattice.executor.base import (
    ExecutorBackend,
    TaskHandle,
    TaskKind,
    TaskOutcome,
    TaskSubmission,
)
from lattice.vocabulary import TaskResourceRequirements

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Running:
    item: PendingItem
    node: SelectedNode
    kind: TaskKind
    handle: TaskHandle | None = None
    started_at: float = 0.0
    #: key of the submission it was chained behind (see _chain_followers) until that one
    #: finishes; meanwhile it holds no resources and the run has not been told it started
    after: str | None = None
    #: its own report, if it came before the one of the submission it is chained behind
    early: Message | None = None


class _Settled(Enum):
    COMPLETED = "completed"
    REQUEUED = "requeued"
    ENDED = "ended"


class Scheduler:
    def __init__(
        self,
        message_bus: MessageBus,
        executor: ExecutorBackend,
        resource_manager: ResourceManager,
        observer: EngineObserver | None = None,
        max_attempts: int = 3,
    ) -> None:
        self._bus = message_bus
        self._executor = executor
        self._rm = resource_manager
        self._observer = observer or EngineObserver()
        self._max_attempts = max_attempts
        self._runtime = WorkflowRuntimeManager()
        self._pending = PendingQueue()
        self._batches = BatchCollector()
        self._waiting = WaitingTasks()
        self._running: dict[str, _Running] = {}
        #: key of a submission -> key of the one chained behind it
        self._followers: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._gauges_dirty = True
        #: the nodes as the API shows them, republished by the scheduler thread on change
        self.nodes_view: list[dict[str, Any]] = resource_manager.snapshot()
        self._handlers: dict[MessageType, Callable[[Message], None]] = {
            MessageType.RUN_TASK: self._add_pending_task,
            MessageType.RUN_TASKS: self._add_run_tasks,
            MessageType.TASK_DONE: self._on_task_done,
            MessageType.STOP_WORKFLOW: self._cancel_workflow,
            MessageType.CLEAR_WORKFLOW: self._clear_workflow,
            MessageType.START_WORKER: self._add_worker,
            MessageType.STOP_WORKER: self._remove_worker,
            MessageType.NODES_CHANGED: self._check_nodes,
            MessageType.SHUTDOWN: self._shutdown,
        }

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
            deadline = self._batches.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = self._bus.receive_in_scheduler(timeout)
            messages = [message] if message is not None else []
            messages.extend(self._bus.drain_in_scheduler())
            for msg in messages:
                self._handle_message(msg)
            self._dispatch_batched_tasks()
            self._dispatch_pending_tasks()
            self._publish_gauges()

    def _handle_message(self, message: Message) -> None:
        handler = self._handlers.get(message.message_type)
        if handler is None:
            log.warning("scheduler ignores message %s", message.message_type)
            return
        try:
            handler(message)
        except Exception:
            # A bug here must not kill the thread that every run depends on; it is logged
            # with its traceback and the loop goes on.
            log.exception("scheduler failed to handle %s", message.message_type)

    # --- queueing ---------------------------------------------------------------------------

    def _add_pending_task(self, message: Message) -> None:
        assert isinstance(message.data, RunTaskData)
        self._queue(message.data)

    def _add_run_tasks(self, message: Message) -> None:
        assert isinstance(message.data, RunTasksData)
        for entry in message.data.tasks:
            self._queue(entry)

    def _queue(self, entry: RunTaskData) -> None:
        self._runtime.add_task(entry.task)
        if entry.after:
            self._waiting.add(entry.task, entry.after)
        else:
            self._make_ready(entry.task)

    def _make_ready(self, task: BaseTaskRuntime) -> None:
        task.status = TaskStatus.READY
        task.enqueued_at = time.monotonic()
        if isinstance(task, CodeTaskRuntime) and task.batch is not None:
            self._batches.add_task(task.batch_group, task, task.batch, task.enqueued_at)
        else:
            self._pending.push(PendingItem([task], task.requirements, task.priority))
        self._gauges_dirty = True

    def _dispatch_batched_tasks(self) -> None:
        for batch in self._batches.get_ready_batches(time.monotonic()):
            first = batch[0]
            self._pending.push(
                PendingItem(
                    list(batch), first.requirements, min(t.priority for t in batch), batched=True
                )
            )

    def _dispatch_pending_tasks(self) -> None:
        blocked: set[Shape] = set()
        while True:
            item = self._pending.best(blocked)
            if item is None:
                return
            node = self._rm.select_node(item.requirements, item.avoid)
            if node is not None:
                self._pending.pop(item)
                self._submit_task(item, node)
            elif not self._rm.can_ever_fit(item.requirements):
                self._pending.pop(item)
                reason = self._rm.explain_never_fits(item.requirements)
                error = TaskErrorInfo.framework("ResourceUnavailableError", reason)
                for task in item.tasks:
                    self._fail(task, error, node_id="")
            else:
                blocked.add(item.shape)

    def _submit_task(self, item: PendingItem, node: SelectedNode) -> None:
        if item.batched:
            # A task whose reference cannot be resolved fails alone, not with its batch.
            for task in list(item.tasks):
                error = self._unresolved_reference(task)
                if error is not None:
                    item.tasks.remove(task)
                    self._fail(task, error, "")
            if not item.tasks:
                self._rm.release_task_resources(node.node_id, item.requirements, node.gpu_ids)
                return
        key = _submission_key(item)
        try:
            submission = build_submission(key, item, node, self._runtime)
        except InvalidReferenceError as exc:
            self._rm.release_task_resources(node.node_id, item.requirements, node.gpu_ids)
            for task in item.tasks:
                self._fail(task, TaskErrorInfo.framework("InvalidReferenceError", str(exc)), "")
            return
        running = _Running(item, node, submission.kind, started_at=time.monotonic())
        self._running[key] = running
        for task in item.tasks:
            task.attempts += 1
            self._runtime.run_task(task, key, node)
            self._announce_start(task, running)
        self._gauges_dirty = True
        try:
            running.handle = self._executor.submit(submission)
        except Exception as exc:
            log.exception("executor refused task %s", key)
            self._on_task_done(
                Message(MessageType.TASK_DONE, TaskDoneData(key, TaskOutcome(error=_error_of(exc))))
            )
            return
        running.handle.add_done_callback(self._reporter(key, submission))
        if self._executor.pipelines:
            self._chain_followers(key, running)

    def _announce_start(self, task: BaseTaskRuntime, running: _Running) -> None:
        node = running.node
        self._observer.task_submitted(
            task.task_name, node.node_id, running.started_at - task.enqueued_at
        )
        self._bus.send_from_scheduler(
            Message(
                MessageType.START_TASK,
                TaskStartedData(
                    task.run_id,
                    task.workflow_id,
                    task.task_id,
                    task.task_name,
                    node.node_id,
                    node.node_ip,
                    node.gpu_ids,
                    task.attempts,
                ),
            )
        )

    def _reporter(self, key: str, submission: TaskSubmission) -> Callable[[TaskOutcome], None]:
        """The done-callback of submission ``key``: runs on the executor's thread."""
        kind, name = submission.kind, submission.task_name

        def done(outcome: TaskOutcome) -> None:
            outcome, encoded = encode_outcome(kind, name, outcome)
            self._bus.send_to_scheduler(
                Message(MessageType.TASK_DONE, TaskDoneData(key, outcome, encoded))
            )

        return done

    # --- chains -----------------------------------------------------------------------------

    def _chain_followers(self, key: str, running: _Running) -> None:
        """Hand the executor, right now, the tasks that continue a chain behind ``running``.

        A follower is a waiting task whose only unfinished upstream task is the one just
        submitted, and that asks for exactly the same resources. It is submitted at once, on
        the same node, with a :class:`~lattice.executor.base.PendingOutput` for that input
        (only executors that pipeline get here): Ray starts it the moment the upstream's
        outcome exists, without a round trip through the head. Until the upstream is reported
        finished the follower holds no resources and the run does not know it started; then
        it takes over the upstream's resources (it continues on its slot, ahead of queued
        tasks) and its ``start_task`` is sent. The follower's own follower is chained behind
        it, so a chain goes out whole. If the upstream fails, is cancelled or lost, the
        follower is taken back (see _take_back_chain).
        """
        while True:
            item = running.item
            upstream = item.tasks[0]
            if item.batched or running.handle is None or item.requirements.gpu:
                return
            follower = self._waiting.take_follower(
                upstream.run_id, upstream.task_id, _continues(item.requirements)
            )
            if follower is None:
                return
            follow_item = PendingItem([follower], follower.requirements, follower.priority)
            follow_key = _submission_key(follow_item)
            try:
                submission = build_submission(
                    follow_key,
                    follow_item,
                    running.node,
                    self._runtime,
                    {upstream.task_id: running.handle},
                )
                handle = self._executor.submit(submission)
            except Exception as exc:
                # It waits as before, and fails the usual way once its upstream finished if
                # it must (a bad reference to a finished task, the executor refusing it).
                if not isinstance(exc, InvalidReferenceError):
                    log.warning("task %s not chained behind %s", follower.key, key, exc_info=True)
                self._waiting.add(follower, {upstream.task_id})
                return
            follower.attempts += 1
            self._runtime.run_task(follower, follow_key, running.node)
            chained = _Running(follow_item, running.node, submission.kind, handle, after=key)
            self._running[follow_key] = chained
            self._followers[key] = follow_key
            handle.add_done_callback(self._reporter(follow_key, submission))
            key, running = follow_key, chained

    def _follow_up(self, key: str, upstream: _Running, settled: _Settled) -> None:
        """The submission ``key`` was chained behind ``upstream``, which is over now."""
        running = self._running[key]
        task, upstream_task = running.item.tasks[0], upstream.item.tasks[0]
        if settled is _Settled.COMPLETED:
            error = self._unresolved_reference(task)
            if error is not None:
                self._take_back_chain(key, upstream_task, wait_again=False)
                self._fail(task, error, "")
                return
            if self._rm.claim(running.node, running.item.requirements):
                running.after = None
                running.started_at = task.enqueued_at = time.monotonic()
                self._announce_start(task, running)
                early, running.early = running.early, None
                if early is not None:
                    self._on_task_done(early)
                return
            # Its node is no longer taking tasks (draining or gone): start it afresh elsewhere.
            self._take_back_chain(key, upstream_task, wait_again=True)
            for ready in self._waiting.finished(task.run_id, upstream_task.task_id):
                self._make_ready(ready)
            return
        self._take_back_chain(key, upstream_task, settled is _Settled.REQUEUED)

    def _take_back_chain(
        self, key: str | None, upstream: BaseTaskRuntime, wait_again: bool
    ) -> None:
        """Withdraw submission ``key`` and everything chained behind it: they must not run with
        what ``upstream`` gave them. With ``wait_again`` (the upstream was dispatched again)
        they wait for it once more; otherwise they are dropped (the run skips or cancels
        them)."""
        while key is not None:
            running = self._running.pop(key)
            task = running.item.tasks[0]
            if running.handle is not None and not self._runtime.is_cancelled(
                task.run_id, task.task_id
            ):
                self._executor.cancel(running.handle)  # its report, if any, is ignored
            if wait_again:
                task.status = TaskStatus.PENDING
                self._waiting.add(task, {upstream.task_id})
            else:
                self._waiting.drop_after(task.run_id, task.task_id)
            self._release_if_drained(running.node.node_id)
            upstream = task
            key = self._followers.pop(key, None)

    def _unresolved_reference(self, task: BaseTaskRuntime) -> TaskErrorInfo | None:
        if not isinstance(task, CodeTaskRuntime):
            return None
        try:
            for _, ref in task.upstream:
                self._runtime.get_task_result_value(task.run_id, ref)
        except InvalidReferenceError as exc:
            return TaskErrorInfo.framework("InvalidReferenceError", str(exc))
        return None

    # --- completion -------------------------------------------------------------------------

    def _on_task_done(self, message: Message) -> None:
        assert isinstance(message.data, TaskDoneData)
        data = message.data
        running = self._running.get(data.key)
        if running is None:
            return  # already settled (e.g. cancelled, then reported by the executor)
        if running.after is not None:
            # Chained behind a submission whose own report has not been handled yet.
            running.early = message
            return
        del self._running[data.key]
        follower = self._followers.pop(data.key, None)
        settled = self._settle(running, data)
        if follower is not None:
            self._follow_up(follower, running, settled)

    def _settle(self, running: _Running, data: TaskDoneData) -> _Settled:
        item, node, outcome = running.item, running.node, data.outcome
        self._rm.release_task_resources(node.node_id, item.requirements, node.gpu_ids)
        self._gauges_dirty = True
        self._release_if_drained(node.node_id)
        live = [t for t in item.tasks if not self._runtime.is_cancelled(t.run_id, t.task_id)]
        for task in item.tasks:
            if task not in live:
                self._report_cancelled(task, node.node_id)
        if not live:
            return _Settled.ENDED
        if outcome.lost:
            # Ray reports a task lost with its node (NodeDiedError) about when its GCS declares
            # the node dead, a moment before this scheduler hears of it. Look now, so
            # that the task is not placed on the dead node again (and lost once more).
            try:
                self._refresh_nodes()
            except LatticeWorldError:
                log.warning("cannot read cluster membership; the node watcher will", exc_info=True)
        if outcome.lost and all(t.attempts < self._max_attempts for t in live):
            log.warning("task %s lost with its node %s; dispatching again", data.key, node.node_id)
            for task in live:
                task.status = TaskStatus.READY
            self._pending.push_front(
                PendingItem(
                    live,
                    item.requirements,
                    item.priority,
                    item.batched,
                    avoid=item.avoid | {node.node_id},
                )
            )
            return _Settled.REQUEUED
        if not outcome.ok:
            assert outcome.error is not None
            error = outcome.error
            if outcome.lost:
                error = TaskErrorInfo.framework(
                    error.type, f"{error.message} (gave up after {self._max_attempts} attempts)"
                )
            for task in live:
                self._fail(task, error, node.node_id, outcome.duration)
            return _Settled.ENDED
        for task, value, encoded in split_outcome(item.tasks, item.batched, outcome, data.encoded):
            if task not in live:
                continue
            self._runtime.set_task_result(task, value)
            self._observer.task_completed(task.task_name, node.node_id, outcome.duration)
            self._bus.send_from_scheduler(
                Message(
                    MessageType.FINISH_TASK,
                    TaskFinishedData(
                        task.run_id,
                        task.workflow_id,
                        task.task_id,
                        task.task_name,
                        value,
                        encoded,
                        node.node_id,
                        outcome.duration,
                    ),
                )
            )
            # Its dependants go out in this same wake-up (dispatched once the inbox is
            # drained), after its finish_task on the way to the run's log.
            for ready in self._waiting.finished(task.run_id, task.task_id):
                self._make_ready(ready)
        return _Settled.COMPLETED if len(live) == len(item.tasks) else _Settled.ENDED

    def _fail(
        self, task: BaseTaskRuntime, error: TaskErrorInfo, node_id: str, duration: float = 0.0
    ) -> None:
        task.status = TaskStatus.FAILED
        self._waiting.drop_after(task.run_id, task.task_id)
        self._observer.task_failed(task.task_name, node_id, duration)
        self._bus.send_from_scheduler(
            Message(
                MessageType.TASK_EXCEPTION,
                TaskFailedData(
                    task.run_id, task.workflow_id, task.task_id, task.task_name, error, node_id
                ),
            )
        )

    def _report_cancelled(self, task: BaseTaskRuntime, node_id: str) -> None:
        task.status = TaskStatus.CANCELLED
        self._waiting.drop_after(task.run_id, task.task_id)
        self._observer.task_cancelled(task.task_name, node_id)
        self._bus.send_from_scheduler(
            Message(
                MessageType.TASK_CANCELLED,
                TaskCancelledData(task.run_id, task.workflow_id, task.task_id, task.task_name),
            )
        )

    # --- runs -------------------------------------------------------------------------------

    def _cancel_workflow(self, message: Message) -> None:
        assert isinstance(message.data, RunControlData)
        run_id = message.data.run_id
        # Tasks still waiting for their inputs were never started: the run cancels them itself.
        self._waiting.drop_run(run_id)
        queued = self._pending.remove_run(run_id) + list(self._batches.remove_run(run_id))
        for task in queued:
            self._report_cancelled(task, "")
        for task in self._runtime.cancel_workflow(run_id):
            for running in self._running.values():
                # A batch shared with other runs keeps running for them.
                if (
                    task in running.item.tasks
                    and running.handle is not None
                    and all(t.run_id == run_id for t in running.item.tasks)
                ):
                    self._executor.cancel(running.handle)
        self._gauges_dirty = True

    def _clear_workflow(self, message: Message) -> None:
        assert isinstance(message.data, RunControlData)
        self._waiting.drop_run(message.data.run_id)
        self._runtime.clear_workflow(message.data.run_id)

    # --- nodes ------------------------------------------------------------------------------

    def _add_worker(self, message: Message) -> None:
        assert isinstance(message.data, StartWorkerData)
        data = message.data
        try:
            alive = self._executor.alive_node_ids()
        except LatticeWorldError:
            log.warning("cannot check that worker %s is in the cluster", data.node_id)
            alive = None
        if alive is not None and data.node_id not in alive:
            # Tasks pinned to a node the cluster does not have would only come back lost.
            log.error(
                "worker %s (%s) registered, but the cluster has no such alive node; ignored",
                data.node_id,
                data.node_ip,
            )
            return
        self._rm.add_node(data.node_id, data.node_ip, data.resources)
        self._gauges_dirty = True

    def _remove_worker(self, message: Message) -> None:
        assert isinstance(message.data, StopWorkerData)
        try:
            self._rm.drain_node(message.data.node_id)
        except NodeNotFoundError:
            # Deregistering twice, or after the node was already forgotten, changes nothing.
            log.warning("disconnect for unknown node %s ignored", message.data.node_id)
            return
        self._gauges_dirty = True
        self._release_if_drained(message.data.node_id)

    def _release_if_drained(self, node_id: str) -> None:
        """Once a disconnected node runs nothing more, the executor lets go of it."""
        try:
            draining = self._rm.get_node(node_id).status is NodeStatus.DRAINING
        except NodeNotFoundError:
            return
        if draining and not any(r.node.node_id == node_id for r in self._running.values()):
            self._executor.release_node(node_id)

    def _check_nodes(self, message: Message) -> None:
        self._refresh_nodes()

    def _refresh_nodes(self) -> None:
        """Align the ResourceManager with the cluster: count new nodes, mark missing ones dead."""
        alive = self._executor.alive_node_ids()
        if alive is None:
            return
        known = {n.node_id for n in self._rm.nodes()}
        if alive - known:
            # Nodes joined the cluster without registering: count what Ray says they have.
            new = [n for n in self._executor.cluster_nodes() if n.get("NodeID") in alive - known]
            self._rm.initialize_with_ray(new)
        for node_id in self._rm.check_node_health(alive):
            log.warning("node %s is dead; its tasks will be dispatched again", node_id)
            self._lose_tasks_on(node_id)
        self._gauges_dirty = True

    def _lose_tasks_on(self, node_id: str) -> None:
        """Report every task still running on dead ``node_id`` lost, without waiting for Ray.

        Ray fails a task with its node when the node's processes die, but one cut off from
        the network keeps its tasks' calls open: Ray would report them never, or much later.
        Whatever it reports later for these keys is ignored (their entries are gone).
        """
        stranded = [
            (key, running)
            for key, running in self._running.items()
            if running.node.node_id == node_id
        ]
        for key, running in stranded:
            message = (
                f"task {key} was lost on node {node_id} ({running.node.node_ip}): "
                "the node left the cluster"
            )
            outcome = TaskOutcome(
                error=TaskErrorInfo.framework("WorkerLostError", message), lost=True
            )
            self._on_task_done(Message(MessageType.TASK_DONE, TaskDoneData(key, outcome)))

    def _shutdown(self, message: Message) -> None:
        self._stopping = True
        for running in list(self._running.values()):
            if running.handle is not None:
                self._executor.cancel(running.handle)

    # --- gauges -----------------------------------------------------------------------------

    def _publish_gauges(self) -> None:
        if not self._gauges_dirty:
            return
        self._gauges_dirty = False
        # A fresh list, swapped in whole: readers on other threads never see it change.
        self.nodes_view = self._rm.snapshot()
        self._observer.pending_changed(len(self._pending) + self._batches.pending_count())
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


def _continues(requirements: TaskResourceRequirements) -> Callable[[BaseTaskRuntime], bool]:
    """Which waiting tasks may be chained behind a task asking for ``requirements``."""

    def accept(task: BaseTaskRuntime) -> bool:
        return (
            isinstance(task, CodeTaskRuntime)
            and task.batch is None
            and task.requirements == requirements
        )

    return accept


def _submission_key(item: PendingItem) -> str:
    key = item.tasks[0].key if not item.batched else f"batch/{uuid.uuid4().hex}"
    if item.tasks[0].attempts:
        # A re-dispatch gets a key of its own: a late report of the lost attempt (its node
        # was given up, see _lose_tasks_on) then finds nothing running under its key.
        key = f"{key}#{item.tasks[0].attempts + 1}"
    return key


def _error_of(exc: BaseException) -> TaskErrorInfo:
    return TaskErrorInfo.framework(type(exc).__name__, f"executor could not run the task: {exc}")
