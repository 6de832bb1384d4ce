"""The Orchestrator: workflows, runs and workers, on the server's event loop (spec/000 §2).

Every public method is called from the event loop thread; the scheduler thread reaches it only
through messages the bus hands to :meth:`_handle_scheduler_message` via
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import psutil

from lattice.core.observer import EngineObserver
from lattice.core.orchestrator import registration
from lattice.core.orchestrator.context import BaseContext, RunContext, SingleTaskContext
from lattice.core.orchestrator.handoff import LoopHandoff
from lattice.core.resource.manager import ResourceManager
from lattice.core.resource.node import NodeResources
from lattice.core.run.events import RunEvent, RunFinished, RunStatus, TaskFailed
from lattice.core.run.log import EventStore, InMemoryEventStore, RunLog
from lattice.core.run.state import InvalidTransition, TaskStatus
from lattice.core.runtime.task import LangGraphTaskRuntime
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    QueueQueryData,
    RunControlData,
    RunTaskData,
    StartWorkerData,
    StopWorkerData,
    TaskControlData,
)
from lattice.core.scheduler.queue_view import QueueView
from lattice.core.scheduler.scheduler import Scheduler
from lattice.core.store.records import StoredDefinitionError, definition_record, rebuild_workflow
from lattice.core.workflow.base import (
    BaseTask,
    CodeTask,
    CodeTaskConfig,
    CodeTaskDraft,
    LangGraphTask,
    TaskType,
    Workflow,
)
from lattice.exceptions import (
    LatticeInputError,
    LatticeTimeoutError,
    LatticeUsageError,
    NotFoundError,
    OrchestratorNotInitializedError,
    RunNotFoundError,
    TaskErrorInfo,
    WorkflowNotFoundError,
)
from lattice.executor.base import ExecutorBackend
from lattice.serialization import decode_code
from lattice.utils.memory import return_free_memory
from lattice.vocabulary import ErrorKind, parse_priority

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(
        self,
        executor: ExecutorBackend,
        *,
        observer: EngineObserver | None = None,
        store: EventStore | None = None,
        local_resources: NodeResources | None = None,
        max_attempts: int = 3,
        ray_head_port: int | None = None,
        priority_aging: float | None = None,
        max_workflow_code_bytes: int | None = None,
    ) -> None:
        self.executor = executor
        self.ray_head_port = ray_head_port
        self._observer = observer or EngineObserver()
        self._store = store or InMemoryEventStore()
        self._local_resources = local_resources
        self._max_attempts = max_attempts
        self._priority_aging = priority_aging
        self._max_workflow_code_bytes = max_workflow_code_bytes
        self._message_bus: MessageBus | None = None
        self._scheduler: Scheduler | None = None
        self.resource_manager = ResourceManager()
        self._workflows: dict[str, Workflow] = {}
        self._run_contexts: dict[str, BaseContext] = {}
        #: workers registered through the API (node id -> address), and those disconnected
        #: since: the scheduler's view of them lags behind this loop
        self._workers: dict[str, str] = {}
        self._disconnected: set[str] = set()
        self._addresses: frozenset[str] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        return self._store

    def initialize(self, ready_timeout: float = 30.0) -> None:
        """Start the executor and the scheduler thread; return once the scheduler is ready.
        Workflows kept in the store become known again (runs resume in start_monitor)."""
        self._load_workflows()
        self.executor.initialize()
        nodes = self.executor.cluster_nodes()
        if nodes:
            self.resource_manager.initialize_with_ray(nodes)
        else:
            self.resource_manager.initialize_local(self._local_resources)
        self._message_bus = MessageBus()
        self._scheduler = Scheduler(
            self._message_bus,
            self.executor,
            self.resource_manager,
            self._observer,
            max_attempts=self._max_attempts,
            priority_aging=self._priority_aging,
        )
        self._scheduler.start()
        if not self._message_bus.wait_ready(ready_timeout):
            raise LatticeUsageError(f"scheduler did not start within {ready_timeout}s")

    async def start_monitor(self) -> None:
        """Route scheduler messages onto this event loop (no polling: a thread-safe hand-off),
        then resume every run the store holds unfinished."""
        loop = asyncio.get_running_loop()
        self._store.bind_loop(loop)
        handoff = LoopHandoff(loop, self._handle_scheduler_message)
        self._bus.set_listener(handoff.put)
        self._resume_runs()

    def _load_workflows(self) -> None:
        for record in self._store.workflows():
            try:
                self._workflows[record.workflow_id] = rebuild_workflow(record)
            except StoredDefinitionError:
                log.exception("workflow %s is kept but cannot be rebuilt", record.workflow_id)

    def _resume_runs(self) -> None:
        """Each unfinished run in the store starts again from what its log recorded; one
        whose definition cannot be rebuilt fails at once, saying why."""
        for stored in self._store.unfinished_runs():
            run_log = self._store.get(stored.run_id)
            try:
                workflow = rebuild_workflow(stored.definition)
            except StoredDefinitionError as exc:
                log.error("run %s cannot resume: %s", stored.run_id, exc)
                self._fail_unloadable(run_log, str(exc))
                continue
            ctx = RunContext(
                stored.run_id, workflow, self._bus, run_log, self._observer, self._on_run_finished
            )
            self._run_contexts[stored.run_id] = ctx
            log.info("resuming run %s of workflow %s", stored.run_id, stored.workflow_id)
            ctx.submit_start_tasks()

    def _fail_unloadable(self, run_log: RunLog, message: str) -> None:
        state = run_log.state
        error = TaskErrorInfo.framework(ErrorKind.CODE_UNAVAILABLE.value, message)
        for task_id, task in list(state.tasks.items()):
            if not task.status.terminal:
                run_log.append(
                    TaskFailed(state.run_id, state.workflow_id, task_id, task.task_name, error)
                )
        run_log.append(
            RunFinished(state.run_id, state.workflow_id, RunStatus.FAILED, state.counts(), message)
        )
        self._store.finished(state.run_id)

    def cleanup(self, timeout: float = 5.0, *, shutdown_executor: bool = True) -> None:
        """End open runs, stop the scheduler and, unless ``shutdown_executor`` is False (an
        executor shared with other orchestrators), shut the executor down.

        With a durable store open runs are left unfinished, to resume when a head opens the
        store again: their streams end now (clients reconnect). Otherwise they are recorded
        cancelled ("server shutting down")."""
        for ctx in list(self._run_contexts.values()):
            if not isinstance(ctx, RunContext):
                continue
            if self._store.durable:
                ctx.log.release()
            else:
                ctx.abort("server shutting down")
        if self._scheduler is not None and self._message_bus is not None:
            self._message_bus.set_listener(None)
            self._message_bus.send_to_scheduler(Message(MessageType.SHUTDOWN))
            if not self._scheduler.join(timeout):
                log.warning("scheduler thread did not stop within %ss", timeout)
            self._scheduler = None
        if shutdown_executor:
            self.executor.shutdown()
        self._store.flush()

    @property
    def _bus(self) -> MessageBus:
        if self._message_bus is None:
            raise OrchestratorNotInitializedError()
        return self._message_bus

    # --- workflows --------------------------------------------------------------------------

    def create_workflow(self, workflow_id: str | None = None) -> Workflow:
        workflow_id = workflow_id or str(uuid.uuid4())
        if workflow_id in self._workflows:
            raise LatticeInputError(f"workflow {workflow_id} already exists")
        workflow = self._workflows[workflow_id] = Workflow(
            workflow_id, max_code_bytes=self._max_workflow_code_bytes
        )
        self._keep(workflow)
        self._observer.workflow_created(workflow_id)
        return workflow

    def _keep(self, workflow: Workflow) -> None:
        """Store the workflow's definition as it stands (after every successful edit)."""
        self._store.save_workflow(definition_record(workflow))

    def delete_workflow(self, workflow_id: str) -> None:
        """Forget a workflow and its finished runs, in memory and in the store.

        Raises WorkflowNotFoundError for an unknown id, LatticeUsageError (changing nothing)
        while a run of it is still running."""
        self.get_workflow(workflow_id)
        running = [
            ctx.run_id
            for ctx in self._run_contexts.values()
            if isinstance(ctx, RunContext) and ctx.workflow.workflow_id == workflow_id
        ]
        if running:
            raise LatticeUsageError(
                f"workflow {workflow_id} has runs still running ({', '.join(running)}); "
                "cancel them before deleting it"
            )
        for run_id in self._store.run_ids():
            if self._store.get(run_id).workflow_id == workflow_id:
                self._store.retire(run_id)
        del self._workflows[workflow_id]
        self._store.delete_workflow(workflow_id)
        return_free_memory()

    def get_workflow(self, workflow_id: str) -> Workflow:
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise WorkflowNotFoundError(workflow_id) from None

    def add_task(self, workflow_id: str, task_type: str, task_name: str) -> str:
        workflow = self.get_workflow(workflow_id)
        if TaskType.parse(task_type) is not TaskType.CODE:
            raise LatticeInputError(
                f"Invalid task type {task_type!r} for /add_task; LangGraph tasks use /add_langgraph_task"
            )
        if not task_name:
            raise LatticeInputError("task_name must not be empty")
        task_id = str(uuid.uuid4())
        workflow.add_task(task_id, CodeTask(workflow_id, task_id, task_name))
        self._keep(workflow)
        return task_id

    def add_code_tasks(
        self,
        workflow_id: str,
        drafts: Sequence[CodeTaskDraft],
        edges: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Add a batch of saved code tasks and edges at once, all or nothing (``/add_tasks``).

        Raises:
            LatticeInputError: a draft's task id is not a UUID, or any task or edge is invalid
                (the workflow is then unchanged).
        """
        workflow = self.get_workflow(workflow_id)
        for draft in drafts:
            _check_task_id(draft.task_id)
            if not draft.task_name:
                raise LatticeInputError(f"task {draft.task_id}: task_name must not be empty")
        workflow.add_code_tasks(drafts, edges)
        self._keep(workflow)

    def save_task(
        self,
        workflow_id: str,
        task_id: str,
        config: CodeTaskConfig,
        *,
        add_edges: bool,
        task_name: str | None = None,
    ) -> None:
        """Save a code task's configuration (``/save_task``; with ``add_edges``,
        ``/save_task_and_add_edge``). On any error the workflow is unchanged."""
        workflow = self.get_workflow(workflow_id)
        workflow.save_task(task_id, config, add_edges=add_edges, task_name=task_name)
        self._keep(workflow)

    def add_edge(self, workflow_id: str, source_task_id: str, target_task_id: str) -> None:
        """Raises CycleError (the edge is not added) if it would close a cycle."""
        workflow = self.get_workflow(workflow_id)
        workflow.add_edge(source_task_id, target_task_id)
        self._keep(workflow)

    def del_edge(self, workflow_id: str, source_task_id: str, target_task_id: str) -> None:
        workflow = self.get_workflow(workflow_id)
        workflow.del_edge(source_task_id, target_task_id)
        self._keep(workflow)

    def del_task(self, workflow_id: str, task_id: str) -> None:
        workflow = self.get_workflow(workflow_id)
        workflow.del_task(task_id)
        self._keep(workflow)

    def workflow_tasks(self, workflow_id: str) -> list[BaseTask]:
        """The workflow's tasks, in the order they were added."""
        return self.get_workflow(workflow_id).tasks()

    def add_langgraph_task(
        self,
        workflow_id: str,
        task_type: str,
        task_name: str,
        code_ser: str,
        resources: dict[str, Any] | None,
        priority: int | str | None = None,
    ) -> str:
        workflow = self.get_workflow(workflow_id)
        if TaskType.parse(task_type) is not TaskType.LANGGRAPH:
            raise LatticeInputError(f"Invalid task type {task_type!r}; expected 'langgraph'")
        task_id = str(uuid.uuid4())
        task = LangGraphTask.create(
            workflow_id, task_id, task_name, code_ser, resources, parse_priority(priority)
        )
        workflow.add_task(task_id, task)
        self._keep(workflow)
        return task_id

    # --- runs -------------------------------------------------------------------------------

    def run_workflow(self, workflow_id: str, priority: int | str | None = None) -> str:
        """Start a run on a copy of the workflow; return its run id. ``priority`` (a level
        or its name) is the default of every task that sets none."""
        run_priority = parse_priority(priority)
        workflow = self.get_workflow(workflow_id)
        unsaved = [t.task_id for t in workflow.code_tasks() if not t.saved]
        if unsaved:
            raise LatticeInputError(f"task(s) {unsaved} have no code yet; save them before running")
        if any(not isinstance(t, CodeTask) for t in workflow.tasks()):
            raise LatticeInputError(
                "this workflow holds LangGraph tasks; they run one call at a time via /run_langgraph_task"
            )
        run_id = str(uuid.uuid4())
        copy = workflow.copy_for_run()
        # Durable before the first task goes out: a crash from here on resumes the run.
        run_log = self._store.create(
            run_id,
            workflow_id,
            [(t.task_id, t.task_name) for t in copy.tasks()],
            definition_record(copy),
        )
        ctx = RunContext(
            run_id, copy, self._bus, run_log, self._observer, self._on_run_finished, run_priority
        )
        self._run_contexts[run_id] = ctx
        self._observer.run_started(run_id, workflow_id)
        ctx.submit_start_tasks()
        return run_id

    def _on_run_finished(self, ctx: RunContext) -> None:
        self._run_contexts.pop(ctx.run_id, None)
        self._store.finished(ctx.run_id)

    def get_run_log(self, run_id: str, workflow_id: str | None = None) -> RunLog:
        """The run's log; with ``workflow_id``, also that the workflow exists and the run is
        one of its own (WorkflowNotFoundError / RunNotFoundError otherwise)."""
        if workflow_id is not None:
            self.get_workflow(workflow_id)
        run_log = self._store.get(run_id)
        if workflow_id is not None and run_log.workflow_id != workflow_id:
            raise RunNotFoundError(run_id, workflow_id)
        return run_log

    async def wait_workflow_complete(self, run_id: str) -> list[dict[str, Any]]:
        run_log = self.get_run_log(run_id)
        await run_log.wait_closed()
        return [e.to_message() for e in run_log.events()]

    def cancel_run(self, run_id: str) -> None:
        self.get_run_log(run_id)
        ctx = self._run_contexts.get(run_id)
        if isinstance(ctx, RunContext):
            ctx.cancel()

    def _open_task(self, task_id: str, run_id: str | None) -> RunLog:
        """The log of the live run that holds ``task_id`` not yet ended.

        Raises:
            NotFoundError: no such run, or no such task in it (or in any live run).
            LatticeUsageError: the task has ended, or (without ``run_id``) several live runs
                hold it (runs of one workflow share task ids: name the run).
        """
        if run_id is not None:
            run_log = self.get_run_log(run_id)
            if task_id not in run_log.state.tasks:
                raise NotFoundError(f"run {run_id} has no task {task_id}")
            if run_log.state.is_terminal(task_id):
                status = run_log.state.task(task_id).status.value
                raise LatticeUsageError(f"task {task_id} of run {run_id} has ended ({status})")
            return run_log
        holders = [
            ctx.log
            for ctx in self._run_contexts.values()
            if isinstance(ctx, RunContext)
            and task_id in ctx.log.state.tasks
            and not ctx.log.state.is_terminal(task_id)
        ]
        if not holders:
            raise NotFoundError(f"no live run has an open task {task_id}")
        if len(holders) > 1:
            runs = ", ".join(sorted(log.run_id for log in holders))
            raise LatticeUsageError(
                f"task {task_id} is open in several runs ({runs}); pass run_id to choose one"
            )
        return holders[0]

    def set_task_priority(
        self, task_id: str, priority: int | str, run_id: str | None = None
    ) -> tuple[str, int]:
        """Give a task that has not started a new priority; return its run id and the level.

        Raises:
            LatticeInputError: not a priority. NotFoundError / LatticeUsageError: see
                :meth:`_open_task`; also LatticeUsageError if it is running already.
        """
        level = parse_priority(priority)
        run_log = self._open_task(task_id, run_id)
        if run_log.state.task(task_id).status is TaskStatus.RUNNING:
            raise LatticeUsageError(f"task {task_id} of run {run_log.run_id} is running already")
        self._bus.send_to_scheduler(
            Message(MessageType.SET_TASK_PRIORITY, TaskControlData(run_log.run_id, task_id, level))
        )
        return run_log.run_id, level

    def cancel_task(self, task_id: str, run_id: str | None = None) -> str:
        """Cancel one task, queued or running; its dependants are skipped. Return its run id.

        Raises NotFoundError / LatticeUsageError: see :meth:`_open_task`."""
        run_log = self._open_task(task_id, run_id)
        self._bus.send_to_scheduler(
            Message(MessageType.CANCEL_TASK, TaskControlData(run_log.run_id, task_id))
        )
        return run_log.run_id

    def retire_run(self, run_id: str) -> None:
        """Forget a finished run and its results, and give the memory they held back to the
        OS (a 10 000-task run leaves the head at its peak size otherwise)."""
        self._store.retire(run_id)
        return_free_memory()

    async def run_langgraph_task(
        self, workflow_id: str, task_id: str, args: str, kwargs: str
    ) -> tuple[Any, Any]:
        """Run one LangGraph node call; return ``(encoded_result, None)`` or ``(None, error)``."""
        task = self.get_workflow(workflow_id).get_task(task_id)
        if not isinstance(task, LangGraphTask):
            raise LatticeInputError(f"task {task_id} is not a langgraph task")
        raw_args = decode_code(args, "args") if args else b""
        raw_kwargs = decode_code(kwargs, "kwargs") if kwargs else b""
        call_id = f"call-{uuid.uuid4()}"
        ctx = SingleTaskContext(task_id, call_id)
        self._run_contexts[call_id] = ctx
        runtime = LangGraphTaskRuntime(
            run_id=call_id,
            workflow_id=workflow_id,
            task_id=task_id,
            task_name=task.task_name,
            code=task.code,
            code_id=task.code_id,
            requirements=task.requirements,
            priority=task.priority,
            serialized_args=raw_args,
            serialized_kwargs=raw_kwargs,
        )
        self._bus.send_to_scheduler(Message(MessageType.RUN_TASK, RunTaskData(runtime)))
        try:
            return await ctx.wait_result()
        finally:
            self._run_contexts.pop(call_id, None)
            self._bus.send_to_scheduler(
                Message(MessageType.CLEAR_WORKFLOW, RunControlData(call_id))
            )

    # --- workers ----------------------------------------------------------------------------

    def add_worker(
        self,
        node_ip: str,
        node_id: str,
        resources: dict[str, Any] | NodeResources,
        *,
        peer: str | None = None,
    ) -> None:
        """Register (or re-register) worker node ``node_id`` at ``node_ip`` with ``resources``.

        ``peer`` is the address the request came from (None: called in-process). Checked
        here, before anything is sent (see :mod:`registration`).

        Raises:
            InvalidResourceError: ``resources`` are malformed, not finite or out of bounds.
            ForbiddenError: the head's own node, or a node other than the caller's.
            NodeNotFoundError: the cluster has no alive node ``node_id``.
            LatticeUsageError: this head's executor takes no workers.
        """
        parsed = (
            resources
            if isinstance(resources, NodeResources)
            else NodeResources.from_wire(resources)
        )
        nodes = self.executor.cluster_nodes()
        registration.check_register(
            node_id,
            node_ip,
            peer=peer,
            head_node_id=self._head_node_id(),
            members=registration.cluster_members(nodes) if nodes else None,
            own_addresses=self._own_addresses(),
        )
        self._workers[node_id] = node_ip
        self._disconnected.discard(node_id)
        self._bus.send_to_scheduler(
            Message(MessageType.START_WORKER, StartWorkerData(node_id, node_ip, parsed))
        )

    def remove_worker(self, node_id: str, *, peer: str | None = None) -> None:
        """Stop placing tasks on ``node_id``; tasks running there finish.

        Raises:
            ForbiddenError: the head's own node, or a node other than the caller's.
            NodeNotFoundError: no such node, or it was disconnected already.
        """
        known = {n["node_id"]: n for n in self.nodes()}
        address = self._workers.get(node_id)
        if address is None and node_id in known:
            address = str(known[node_id]["node_ip"])
        connected = node_id not in self._disconnected and (
            node_id in self._workers or known.get(node_id, {}).get("state") == "alive"
        )
        registration.check_disconnect(
            node_id,
            peer=peer,
            head_node_id=self._head_node_id(),
            node_address=address,
            connected=connected,
            own_addresses=self._own_addresses(),
        )
        self._disconnected.add(node_id)
        self._bus.send_to_scheduler(Message(MessageType.STOP_WORKER, StopWorkerData(node_id)))

    def _head_node_id(self) -> str | None:
        # The executor knows which node is the head's own (the resource manager's first
        # node is that only on a cluster the head started itself).
        return self.executor.own_node_id() or self.resource_manager.head_node_id

    def _own_addresses(self) -> frozenset[str]:
        if self._addresses is None:
            self._addresses = frozenset(
                a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            )
        return self._addresses

    async def queue_view(self, timeout: float = 10.0) -> QueueView:
        """What is queued and why, as the scheduler sees it now (asked on its thread)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[QueueView] = loop.create_future()

        def settle(view: QueueView) -> None:
            if not answer.done():
                answer.set_result(view)

        def reply(view: QueueView) -> None:
            loop.call_soon_threadsafe(settle, view)

        self._bus.send_to_scheduler(Message(MessageType.QUEUE_QUERY, QueueQueryData(reply)))
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise LatticeTimeoutError(f"the scheduler did not answer within {timeout}s") from None

    def nodes(self) -> list[dict[str, Any]]:
        """Every node as the scheduler last published it (safe from this thread)."""
        if self._scheduler is None:
            raise OrchestratorNotInitializedError()
        return self._scheduler.nodes_view

    # --- scheduler messages -----------------------------------------------------------------

    def _handle_scheduler_message(self, message: Message) -> None:
        event = message.data
        if not isinstance(event, RunEvent):
            log.warning("orchestrator ignores scheduler message %s", message.message_type)
            return
        ctx = self._run_contexts.get(event.run_id)
        if ctx is None:
            return  # the run already ended (aborted at shutdown, or a call whose client left)
        try:
            ctx.apply(event)
        except InvalidTransition:
            # The core checks every event against the same fold before it sends it: this is
            # a bug, and the run must not hang on it.
            log.exception("run %s cannot take %s; ending it", event.run_id, event.kind)
            if isinstance(ctx, RunContext):
                ctx.abort(f"internal error: the run's log refused {event.kind}")

    # --- read-only views (dashboard, CLI) ---------------------------------------------------

    def run_logs(self) -> list[RunLog]:
        """The log of every run the store holds (running and kept finished ones)."""
        logs = []
        for run_id in self._store.run_ids():
            try:
                logs.append(self._store.get(run_id))
            except RunNotFoundError:
                continue  # retired between the listing and the read
        return logs

    def run_edges(self, run_id: str) -> list[tuple[str, str]]:
        """The dependency edges among a run's tasks: from the run's own copy while it runs,
        else from its workflow's definition as it is now (limited to the run's tasks); none
        when the workflow is gone."""
        run_log = self.get_run_log(run_id)
        ctx = self._run_contexts.get(run_id)
        workflow = ctx.workflow if isinstance(ctx, RunContext) else None
        workflow = workflow or self._workflows.get(run_log.workflow_id)
        if workflow is None:
            return []
        tasks = run_log.state.tasks
        return [(a, b) for a, b in workflow.get_graph_edges() if a in tasks and b in tasks]


def _check_task_id(task_id: str) -> None:
    """A client-chosen task id must be a UUID, like the ones the server gives out."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        raise LatticeInputError(
            f"task_id {task_id!r} is not a UUID; leave it out and the server picks one"
        ) from None
