"""The scheduler's decisions, as a pure function of (state, message) -> commands.

:class:`SchedulerCore` is the single decider of DAG progress: it alone releases, places,
retries, skips and cancels tasks, and says so in run events (:mod:`lattice.core.run.events`)
that it folds into its own :class:`~lattice.core.run.state.RunState` per run before it hands
them out. It calls nothing: every effect (submit, cancel, emit an event, release a node, stop)
is a :mod:`command <lattice.core.scheduler.commands>` that the scheduler thread performs. It
reads no clock either: each call is given ``now``. So every rule here (chains, batches, node
loss, cancellation, the skips after a failure) is unit-tested without a thread or an executor.

A run hands over all its tasks at once (``RUN_TASKS``), each with the tasks it waits for. A
task is released the moment its last upstream task finishes, in the same wake-up. On an
executor that pipelines, a task that continues a chain (its only unfinished upstream task just
went out, asking for the same resources) is handed over at once behind it (see
:meth:`SchedulerCore._chain_follower`).
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lattice.core.resource.manager import ResourceManager
from lattice.core.resource.node import NodeStatus, SelectedNode
from lattice.core.run.events import TaskPriorityChanged, TaskStarted
from lattice.core.run.state import RunState
from lattice.core.runtime.task import BaseTaskRuntime, CodeTaskRuntime
from lattice.core.scheduler.batch_collector import BatchCollector
from lattice.core.scheduler.commands import Cancel, Command, ReleaseNode, Stop, Submit
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    NodesObservedData,
    RunControlData,
    RunTaskData,
    RunTasksData,
    StartWorkerData,
    StopWorkerData,
    SubmitRefusedData,
    SubmittedData,
    TaskControlData,
    TaskDoneData,
)
from lattice.core.scheduler.pending import PendingItem, PendingQueue, Shape
from lattice.core.scheduler.queue_view import QueuedTask, QueueState, QueueView, why_no_room
from lattice.core.scheduler.runs import RunBook
from lattice.core.scheduler.submission import build_submission, split_outcome
from lattice.exceptions import InvalidReferenceError, NodeNotFoundError, TaskErrorInfo
from lattice.executor.base import TaskKind, TaskOutcome
from lattice.vocabulary import ErrorKind, TaskResourceRequirements

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Running:
    """A submission the executor has (or is about to have)."""

    item: PendingItem
    node: SelectedNode
    kind: TaskKind
    #: the executor took it (SUBMITTED came back)
    accepted: bool = False
    #: a Cancel was sent for it
    cancelled: bool = False
    #: key of the submission it was chained behind (see _chain_follower) until that one
    #: finishes; meanwhile it holds no resources and the run has not been told it started
    after: str | None = None
    #: its own report, if it came before the one of the submission it is chained behind
    early: TaskDoneData | None = None


class _Settled(Enum):
    COMPLETED = "completed"
    REQUEUED = "requeued"
    ENDED = "ended"


class SchedulerCore:
    """The scheduler's state and decisions. One thread calls it; it does no I/O."""

    def __init__(
        self,
        resources: ResourceManager,
        *,
        max_attempts: int = 3,
        pipelines: bool = False,
        priority_aging: float | None = None,
    ) -> None:
        """``priority_aging``: seconds a queued task waits per priority level it gains (see
        scheduler.pending; None: no aging)."""
        self._rm = resources
        self._max_attempts = max_attempts
        self._pipelines = pipelines
        self._out: list[Command] = []
        self._runs = RunBook(self._out)
        self._pending = PendingQueue(priority_aging)
        self._batches = BatchCollector()
        self._running: dict[str, _Running] = {}
        #: key of a submission -> key of the one chained behind it
        self._followers: dict[str, str] = {}
        self._now = 0.0
        #: the nodes or the queue changed since the thread last published them
        self.dirty = True
        self._handlers: dict[MessageType, Callable[[Any], None]] = {
            MessageType.RUN_TASK: self._on_run_task,
            MessageType.RUN_TASKS: self._on_run_tasks,
            MessageType.TASK_DONE: self._on_task_done,
            MessageType.SUBMITTED: self._on_submitted,
            MessageType.SUBMIT_REFUSED: self._on_submit_refused,
            MessageType.STOP_WORKFLOW: self._on_cancel_run,
            MessageType.CLEAR_WORKFLOW: self._on_clear_run,
            MessageType.SET_TASK_PRIORITY: self._on_set_priority,
            MessageType.CANCEL_TASK: self._on_cancel_task,
            MessageType.START_WORKER: self._on_add_worker,
            MessageType.STOP_WORKER: self._on_remove_worker,
            MessageType.NODES_OBSERVED: self._on_nodes_observed,
            MessageType.SHUTDOWN: self._on_shutdown,
        }

    # --- the two entry points ---------------------------------------------------------------

    def handle(self, message: Message, now: float) -> list[Command]:
        """Decide what ``message`` means. A bug while deciding never leaves a run hanging:
        the runs it concerns fail at once with a ``SchedulerError`` carrying the traceback."""
        self._now = now
        handler = self._handlers.get(message.message_type)
        if handler is None:
            log.warning("scheduler ignores message %s", message.message_type)
            return []
        affected = self._runs_of(message)
        try:
            handler(message.data)
        except Exception as exc:  # a bug: the runs it concerns fail, loudly
            log.exception("scheduler failed to handle %s", message.message_type)
            self._fail_runs(affected, exc)
        return self._take()

    def dispatch(self, now: float) -> list[Command]:
        """Release due batches, then place every queued task that fits somewhere now."""
        self._now = now
        for batch in self._batches.get_ready_batches(now):
            first = batch[0]
            self._pending.push(
                PendingItem(
                    list(batch),
                    first.requirements,
                    min(t.priority for t in batch),
                    batched=True,
                    since=min(t.enqueued_at for t in batch),
                )
            )
        blocked: set[Shape] = set()
        while True:
            item = self._pending.best(blocked, now)
            if item is None:
                break
            try:
                placed = self._place(item)
            except Exception as exc:
                log.exception("scheduler failed to place %s", [t.key for t in item.tasks])
                if item in self._pending:
                    self._pending.pop(item)
                self._fail_runs(item.run_ids, exc)
                continue
            if not placed:
                blocked.add(item.shape)
        return self._take()

    def next_deadline(self) -> float | None:
        """When the thread must wake without a message: the next batch is due, or a joining
        node's grace ends (a task only it might hold then fails or goes elsewhere)."""
        deadlines = [self._batches.next_deadline(), self._rm.next_join_deadline()]
        return min((d for d in deadlines if d is not None), default=None)

    def queued_count(self) -> int:
        return len(self._pending) + self._batches.pending_count()

    def queue_view(self, now: float) -> QueueView:
        """Every task of a live run that has not ended: where it is and why it waits."""
        out: list[QueuedTask] = []

        def entry(
            task: BaseTaskRuntime,
            state: QueueState,
            reason: str | None,
            effective: int | None = None,
            node_id: str | None = None,
        ) -> QueuedTask:
            ready = state is not QueueState.WAITING_FOR_INPUTS
            return QueuedTask(
                task.run_id,
                task.workflow_id,
                task.task_id,
                task.task_name,
                task.priority,
                task.priority if effective is None else effective,
                state,
                max(0.0, now - task.enqueued_at) if ready else 0.0,
                task.requirements.to_dict(),
                reason,
                node_id,
            )

        for task, remaining in self._runs.waiting.entries():
            reason = f"waits for {len(remaining)} upstream task(s): {', '.join(sorted(remaining))}"
            out.append(entry(task, QueueState.WAITING_FOR_INPUTS, reason))
        nodes = self._rm.nodes()
        for item in self._pending:
            why = why_no_room(item.requirements, nodes)
            level = self._pending.effective_priority(item, now)
            out.extend(entry(t, QueueState.WAITING_FOR_RESOURCES, why, level) for t in item.tasks)
        for tasks, size, due in self._batches.groups():
            reason = f"in a batch of {len(tasks)}/{size}, due in {max(0.0, due - now):.2f}s"
            out.extend(entry(t, QueueState.IN_BATCH, reason) for t in tasks)
        for running in self._running.values():
            chained = running.after is not None
            state = QueueState.WAITING_FOR_INPUTS if chained else QueueState.RUNNING
            waits = "chained behind its running upstream task" if chained else None
            out.extend(
                entry(t, state, waits, node_id=running.node.node_id)
                for t in running.item.tasks
                if self._runs.live(t)
            )
        return QueueView(tuple(out))

    def run_state(self, run_id: str) -> RunState | None:
        """The core's fold of a live run (None once it finished)."""
        return self._runs.state(run_id)

    def _take(self) -> list[Command]:
        out = list(self._out)
        self._out.clear()
        return out

    # --- runs -------------------------------------------------------------------------------

    def _on_run_task(self, data: RunTaskData) -> None:
        if self._runs.add_one(data):
            self._make_ready(data.task)

    def _on_run_tasks(self, data: RunTasksData) -> None:
        for task in self._runs.start(data.run_id, data.workflow_id, data.tasks, data.history):
            self._make_ready(task)

    def _on_cancel_run(self, data: RunControlData) -> None:
        """Nothing of the run starts any more; what runs is stopped and reported cancelled
        when its executor reports back."""
        if data.run_id not in self._runs or self._runs.cancelling(data.run_id):
            return
        self._pending.remove_run(data.run_id)
        self._batches.remove_run(data.run_id)
        for key, running in list(self._running.items()):
            # A batch shared with other runs keeps running for them.
            if all(t.run_id == data.run_id for t in running.item.tasks):
                self._cancel(key, running)
        self._runs.cancel(data.run_id)
        self.dirty = True

    def _on_set_priority(self, data: TaskControlData) -> None:
        """A task that has not started gets a new priority (where it waits, it keeps its
        place in time: aging goes on from when it became ready)."""
        assert data.priority is not None
        state = self._runs.state(data.run_id)
        if state is None or state.is_terminal(data.task_id):
            return
        task = self._runs.waiting.find(data.run_id, data.task_id) or self._batches.find(
            data.run_id, data.task_id
        )
        item = self._pending_item(data.run_id, data.task_id)
        if item is not None:
            task = next(t for t in item.tasks if t.task_id == data.task_id)
        if task is None:
            return  # it started meanwhile
        previous, task.priority = task.priority, data.priority
        if item is not None:
            self._pending.pop(item)
            self._pending.push(
                PendingItem(
                    item.tasks,
                    item.requirements,
                    min(t.priority for t in item.tasks),
                    item.batched,
                    avoid=item.avoid,
                    since=item.since,
                )
            )
        self._runs.emit(
            TaskPriorityChanged(
                task.run_id, task.workflow_id, task.task_id, data.priority, previous
            )
        )
        self.dirty = True

    def _on_cancel_task(self, data: TaskControlData) -> None:
        """One task is cancelled, wherever it is; what depends on it is skipped."""
        if not self._runs.cancel_task(data.run_id, data.task_id):
            return
        for key, running in list(self._running.items()):
            mine = [
                t
                for t in running.item.tasks
                if t.run_id == data.run_id and t.task_id == data.task_id
            ]
            if not mine:
                continue
            if running.after is not None:
                # Chained and not started: withdraw it (and what is chained behind it).
                self._followers.pop(running.after, None)
                upstream = self._running[running.after].item.tasks[0]
                self._take_back_chain(key, upstream, wait_again=False)
                self._runs.cancelled(mine[0], "")
            elif len(running.item.tasks) == 1:
                self._cancel(key, running)  # reported cancelled when the executor answers
            return
        task: BaseTaskRuntime | None = self._runs.waiting.remove(data.run_id, data.task_id)
        batched = self._batches.find(data.run_id, data.task_id)
        if batched is not None:
            self._batches.remove_task(batched)
            task = batched
        item = self._pending_item(data.run_id, data.task_id)
        if item is not None:
            self._pending.pop(item)
            task = next(t for t in item.tasks if t.task_id == data.task_id)
            rest = [t for t in item.tasks if t is not task]
            if rest:
                self._pending.push(
                    PendingItem(
                        rest, item.requirements, item.priority, item.batched, since=item.since
                    )
                )
        if task is not None:
            self._runs.cancelled(task, "")
        self.dirty = True

    def _pending_item(self, run_id: str, task_id: str) -> PendingItem | None:
        for item in self._pending:
            if any(t.run_id == run_id and t.task_id == task_id for t in item.tasks):
                return item
        return None

    def _on_clear_run(self, data: RunControlData) -> None:
        """Forget a run whose owner is gone (a LangGraph call whose client went away)."""
        self._runs.forget(data.run_id)

    # --- queueing and placement -------------------------------------------------------------

    def _make_ready(self, task: BaseTaskRuntime) -> None:
        task.enqueued_at = self._now
        if isinstance(task, CodeTaskRuntime) and task.batch is not None:
            self._batches.add_task(task.batch_group, task, task.batch, self._now)
        else:
            self._pending.push(
                PendingItem([task], task.requirements, task.priority, since=self._now)
            )
        self.dirty = True

    def _place(self, item: PendingItem) -> bool:
        """Submit ``item`` if a node has room, fail it if none ever will; False if it waits."""
        node = self._rm.select_node(item.requirements, item.avoid)
        if node is not None:
            self._pending.pop(item)
            self._submit(item, node)
            return True
        if self._rm.can_ever_fit(item.requirements):
            return False
        self._pending.pop(item)
        error = TaskErrorInfo.framework(
            ErrorKind.RESOURCE_UNAVAILABLE.value, self._rm.explain_never_fits(item.requirements)
        )
        for task in item.tasks:
            self._runs.fail(task, error, node_id="")
        return True

    def _submit(self, item: PendingItem, node: SelectedNode) -> None:
        if item.batched:
            # A task whose reference cannot be resolved fails alone, not with its batch.
            for task in list(item.tasks):
                error = self._runs.unresolved_reference(task)
                if error is not None:
                    item.tasks.remove(task)
                    self._runs.fail(task, error, "")
            if not item.tasks:
                self._rm.release_task_resources(node.node_id, item.requirements, node.gpu_ids)
                return
        key = _submission_key(item)
        try:
            submission = build_submission(key, item, node, self._runs.runtime)
        except InvalidReferenceError as exc:
            self._rm.release_task_resources(node.node_id, item.requirements, node.gpu_ids)
            error = TaskErrorInfo.framework(ErrorKind.INVALID_REFERENCE.value, str(exc))
            for task in item.tasks:
                self._runs.fail(task, error, "")
            return
        running = self._running[key] = _Running(item, node, submission.kind)
        for task in item.tasks:
            task.dispatches += 1
            self._announce_start(task, running)
        self.dirty = True
        self._out.append(Submit(submission))

    def _announce_start(self, task: BaseTaskRuntime, running: _Running) -> None:
        task.attempts += 1
        node = running.node
        self._runs.emit(
            TaskStarted(
                task.run_id,
                task.workflow_id,
                task.task_id,
                task.task_name,
                node.node_id,
                node.node_ip,
                node.gpu_ids,
                task.attempts,
                queued_for=self._now - task.enqueued_at,
            )
        )

    # --- what the executor said about a submission ------------------------------------------

    def _on_submitted(self, data: SubmittedData) -> None:
        running = self._running.get(data.key)
        if running is None:
            return
        running.accepted = True
        if self._pipelines:
            self._chain_follower(data.key, running)

    def _on_submit_refused(self, data: SubmitRefusedData) -> None:
        running = self._running.get(data.key)
        if running is None:
            return
        if running.after is not None:
            # A follower the executor would not take waits for its upstream as before, and
            # fails the usual way then if it must.
            upstream_key = running.after
            del self._running[data.key]
            self._followers.pop(upstream_key, None)
            upstream = self._running.get(upstream_key)
            task = running.item.tasks[0]
            if upstream is not None:
                self._runs.waiting.add(task, {upstream.item.tasks[0].task_id})
            return
        self._on_task_done(TaskDoneData(data.key, TaskOutcome(error=data.error)))

    def _cancel(self, key: str, running: _Running) -> None:
        if not running.cancelled:
            running.cancelled = True
            self._out.append(Cancel(key))

    # --- chains -----------------------------------------------------------------------------

    def _chain_follower(self, key: str, running: _Running) -> None:
        """Hand the executor, right now, the task that continues a chain behind ``running``.

        A follower is a waiting task whose only unfinished upstream task is the one just
        submitted, and that asks for exactly the same resources. It goes out at once, for the
        same node, with an :class:`~lattice.core.scheduler.commands.AwaitOutput` for that
        input: the executor starts it the moment the upstream's outcome exists, without a
        round trip through the head. Until the upstream is reported finished the follower
        holds no resources and the run does not know it started; then it takes over the
        upstream's resources (it continues on its slot, ahead of queued tasks) and its
        ``start_task`` is emitted. Once the executor took it, the follower's own follower is
        chained behind it, so a chain goes out whole. If the upstream fails, is cancelled or
        lost, the follower is taken back (see _take_back_chain).
        """
        item = running.item
        upstream = item.tasks[0]
        if item.batched or item.requirements.gpu:
            return
        follower = self._runs.waiting.take_follower(
            upstream.run_id, upstream.task_id, _continues(item.requirements)
        )
        if follower is None:
            return
        follow_item = PendingItem([follower], follower.requirements, follower.priority)
        follow_key = _submission_key(follow_item)
        try:
            submission = build_submission(
                follow_key, follow_item, running.node, self._runs.runtime, {upstream.task_id: key}
            )
        except InvalidReferenceError:
            # It waits as before, and fails the usual way once its upstream finished.
            self._runs.waiting.add(follower, {upstream.task_id})
            return
        follower.dispatches += 1
        self._running[follow_key] = _Running(follow_item, running.node, submission.kind, after=key)
        self._followers[key] = follow_key
        self._out.append(Submit(submission))

    def _follow_up(self, key: str, upstream: _Running, settled: _Settled) -> None:
        """The submission ``key`` was chained behind ``upstream``, which is over now."""
        running = self._running[key]
        task, upstream_task = running.item.tasks[0], upstream.item.tasks[0]
        if settled is _Settled.COMPLETED and self._runs.live(task):
            error = self._runs.unresolved_reference(task)
            if error is not None:
                self._take_back_chain(key, upstream_task, wait_again=False)
                self._runs.fail(task, error, "")
                return
            if self._rm.claim(running.node, running.item.requirements):
                running.after = None
                task.enqueued_at = self._now
                self._announce_start(task, running)
                early, running.early = running.early, None
                if early is not None:
                    self._on_task_done(early)
                return
            # Its node is no longer taking tasks (draining or gone): start it afresh elsewhere.
            self._take_back_chain(key, upstream_task, wait_again=True)
            for ready in self._runs.waiting.finished(task.run_id, upstream_task.task_id):
                self._make_ready(ready)
            return
        self._take_back_chain(key, upstream_task, settled is _Settled.REQUEUED)

    def _take_back_chain(
        self, key: str | None, upstream: BaseTaskRuntime, wait_again: bool
    ) -> None:
        """Withdraw submission ``key`` and everything chained behind it: they must not run with
        what ``upstream`` gave them. With ``wait_again`` (the upstream was dispatched again)
        they wait for it once more; otherwise they are dropped (the run has skipped or
        cancelled them, or does so now)."""
        while key is not None:
            running = self._running.pop(key)
            task = running.item.tasks[0]
            if running.accepted:
                self._cancel(key, running)  # its report, if any, is ignored
            if wait_again:
                self._runs.waiting.add(task, {upstream.task_id})
            else:
                self._runs.waiting.drop_after(task.run_id, task.task_id)
            self._release_if_drained(running.node.node_id)
            upstream = task
            key = self._followers.pop(key, None)

    # --- completion -------------------------------------------------------------------------

    def _on_task_done(self, data: TaskDoneData) -> None:
        running = self._running.get(data.key)
        if running is None:
            return  # already settled (e.g. given up as lost, then reported by the executor)
        if running.after is not None:
            # Chained behind a submission whose own report has not been handled yet.
            running.early = data
            return
        del self._running[data.key]
        follower = self._followers.pop(data.key, None)
        settled = self._settle(running, data)
        if follower is not None:
            self._follow_up(follower, running, settled)

    def _settle(self, running: _Running, data: TaskDoneData) -> _Settled:
        item, node, outcome = running.item, running.node, data.outcome
        self._rm.release_task_resources(node.node_id, item.requirements, node.gpu_ids)
        self.dirty = True
        self._release_if_drained(node.node_id)
        live = [t for t in item.tasks if self._runs.live(t)]
        for task in item.tasks:
            if task not in live:
                self._runs.cancelled(task, node.node_id)
        if not live:
            return _Settled.ENDED
        if outcome.lost and all(t.attempts < self._max_attempts for t in live):
            log.warning("task %s lost with its node %s; dispatching again", data.key, node.node_id)
            self._pending.push_front(
                PendingItem(
                    live,
                    item.requirements,
                    item.priority,
                    item.batched,
                    avoid=item.avoid | {node.node_id},
                    since=item.since,
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
                self._runs.fail(task, error, node.node_id, outcome.duration)
            return _Settled.ENDED
        for task, value, encoded in split_outcome(item.tasks, item.batched, outcome, data.encoded):
            if task not in live:
                continue
            # Its dependants go out in this same wake-up, after its finish_task.
            for ready in self._runs.finished(task, value, encoded, node.node_id, outcome.duration):
                self._make_ready(ready)
        return _Settled.COMPLETED if len(live) == len(item.tasks) else _Settled.ENDED

    # --- a bug while deciding ---------------------------------------------------------------

    def _runs_of(self, message: Message) -> set[str]:
        data = message.data
        if isinstance(data, RunTasksData):
            return {data.run_id}
        if isinstance(data, RunTaskData):
            return {data.task.run_id}
        if isinstance(data, (TaskDoneData, SubmittedData, SubmitRefusedData)):
            running = self._running.get(data.key)
            return set() if running is None else running.item.run_ids
        run_id = getattr(data, "run_id", None)
        if isinstance(run_id, str):
            return {run_id}
        return set()

    def _fail_runs(self, run_ids: set[str], exc: BaseException) -> None:
        """Fail every open task of ``run_ids`` with a SchedulerError; stop what they run."""
        text = "".join(traceback.format_exception(exc))
        error = TaskErrorInfo(
            ErrorKind.SCHEDULER.value,
            f"the scheduler failed while deciding about this run: {type(exc).__name__}: {exc}",
            text,
        )
        # A batch shared with other runs fails for them too: none may wait for it forever.
        run_ids = set(run_ids)
        while True:
            shared = set().union(
                *(r.item.run_ids for r in self._running.values() if r.item.run_ids & run_ids)
            )
            if shared <= run_ids:
                break
            run_ids |= shared
        for key, running in list(self._running.items()):
            if running.item.run_ids & run_ids:
                del self._running[key]
                self._followers.pop(key, None)
                self._cancel(key, running)
                if running.after is None:
                    node, reqs = running.node, running.item.requirements
                    self._rm.release_task_resources(node.node_id, reqs, node.gpu_ids)
        for run_id in run_ids:
            self._pending.remove_run(run_id)
            self._batches.remove_run(run_id)
            self._runs.fail_open_tasks(run_id, error)
        self.dirty = True

    # --- nodes ------------------------------------------------------------------------------

    def _on_add_worker(self, data: StartWorkerData) -> None:
        if data.in_cluster is False:
            # Tasks pinned to a node the cluster does not have would only come back lost.
            log.error(
                "worker %s (%s) registered, but the cluster has no such alive node; ignored",
                data.node_id,
                data.node_ip,
            )
            return
        self._rm.add_node(data.node_id, data.node_ip, data.resources)
        self.dirty = True

    def _on_remove_worker(self, data: StopWorkerData) -> None:
        try:
            self._rm.drain_node(data.node_id)
        except NodeNotFoundError:
            # Deregistering twice, or after the node was already forgotten, changes nothing.
            log.warning("disconnect for unknown node %s ignored", data.node_id)
            return
        self.dirty = True
        self._release_if_drained(data.node_id)

    def _release_if_drained(self, node_id: str) -> None:
        """Once a disconnected node runs nothing more, the executor lets go of it."""
        try:
            draining = self._rm.get_node(node_id).status is NodeStatus.DRAINING
        except NodeNotFoundError:
            return
        if draining and not any(r.node.node_id == node_id for r in self._running.values()):
            self._out.append(ReleaseNode(node_id))

    def _on_nodes_observed(self, data: NodesObservedData) -> None:
        """Align the ResourceManager with the cluster: count new nodes, mark missing ones
        dead, and give up their tasks as lost."""
        if data.alive is None:
            return
        if data.new_nodes:
            # Nodes joined the cluster without registering: count what the cluster says.
            self._rm.initialize_with_ray(data.new_nodes)
        for node_id in self._rm.check_node_health(data.alive):
            log.warning("node %s is dead; its tasks will be dispatched again", node_id)
            self._lose_tasks_on(node_id)
        self.dirty = True

    def known_node_ids(self) -> set[str]:
        return {n.node_id for n in self._rm.nodes()}

    def _lose_tasks_on(self, node_id: str) -> None:
        """Report every task still running on dead ``node_id`` lost, without waiting for the
        executor: one cut off from the network may report them never, or much later. Whatever
        it reports later for these keys is ignored (their entries are gone)."""
        stranded = [(k, r) for k, r in self._running.items() if r.node.node_id == node_id]
        for key, running in stranded:
            message = (
                f"task {key} was lost on node {node_id} ({running.node.node_ip}): "
                "the node left the cluster"
            )
            outcome = TaskOutcome(
                error=TaskErrorInfo.framework(ErrorKind.WORKER_LOST.value, message), lost=True
            )
            self._on_task_done(TaskDoneData(key, outcome))

    def _on_shutdown(self, data: object) -> None:
        for key, running in list(self._running.items()):
            if running.accepted:
                self._cancel(key, running)
        self._out.append(Stop())


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
    first = item.tasks[0]
    key = first.key if not item.batched else f"batch/{uuid.uuid4().hex}"
    if first.dispatches:
        # A re-dispatch gets a key of its own: a late report of the lost attempt (its node
        # was given up, see _lose_tasks_on) then finds nothing running under its key.
        key = f"{key}#{first.dispatches + 1}"
    return key
