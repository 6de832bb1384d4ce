"""Execution contexts: one workflow run (RunContext) or one LangGraph call (SingleTaskContext).

Both live on the event loop thread and are fed the scheduler's run events by the orchestrator.
Neither decides anything about a task: the scheduler core does, and says so in events.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from lattice.core.observer import EngineObserver
from lattice.core.run.events import (
    RunEvent,
    RunFinished,
    RunStatus,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskStarted,
)
from lattice.core.run.log import RunLog
from lattice.core.run.state import TaskStatus
from lattice.core.runtime.task import CodeTaskRuntime
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    RunControlData,
    RunTaskData,
    RunTasksData,
)
from lattice.core.workflow.base import CodeTask, Workflow
from lattice.core.workflow.inputs import InputSchema
from lattice.exceptions import TaskErrorInfo
from lattice.vocabulary import DEFAULT_PRIORITY, ErrorKind


class BaseContext(ABC):
    run_id: str

    @abstractmethod
    def apply(self, event: RunEvent) -> None:
        """An event the scheduler decided for this run."""


def code_task_runtime(
    run_id: str, task: CodeTask, run_priority: int = DEFAULT_PRIORITY
) -> CodeTaskRuntime:
    """The runtime of ``task`` in run ``run_id``; a task that sets no priority takes the
    run's."""
    assert task.code is not None, "run_workflow checks every task is saved"
    return CodeTaskRuntime(
        run_id=run_id,
        workflow_id=task.workflow_id,
        task_id=task.task_id,
        task_name=task.task_name,
        code=task.code,
        code_id=task.code_id,
        requirements=task.requirements,
        priority=run_priority if task.priority is None else task.priority,
        sandbox=task.sandbox,
        outputs=task.outputs,
        user_inputs={p.key: p.value for p in task.inputs if p.schema is InputSchema.FROM_USER},
        upstream=tuple((p.key, p.ref) for p in task.inputs if p.ref is not None),
        batch=task.batch,
    )


class RunContext(BaseContext):
    """One run of a workflow: hands its tasks to the scheduler and records every event the
    scheduler decides in the run's log (whose fold is the run's state)."""

    def __init__(
        self,
        run_id: str,
        workflow: Workflow,
        message_bus: MessageBus,
        log: RunLog,
        observer: EngineObserver,
        on_finished: Callable[[RunContext], None],
        priority: int = DEFAULT_PRIORITY,
    ) -> None:
        self.run_id = run_id
        self.priority = priority
        self.workflow = workflow
        self.log = log
        self._bus = message_bus
        self._observer = observer
        self._on_finished = on_finished

    @property
    def finished(self) -> bool:
        return self.log.closed

    def submit_start_tasks(self) -> None:
        """Hand every task of the run to the scheduler: the ready ones to run now, the others
        with the tasks they wait for (the scheduler releases each one the moment its last
        upstream task finishes; see scheduler.waiting).

        A run whose log already holds events (read back from the store after a restart)
        resumes: the scheduler gets those events too and starts from their fold, and a task
        waits only for upstream tasks without a recorded finish."""
        workflow = self.workflow
        state = self.log.state
        completed = {
            tid for tid, task in state.tasks.items() if task.status is TaskStatus.COMPLETED
        }
        ready = {t.task_id for t in workflow.get_ready_tasks_after_completion(completed)}
        upstream: dict[str, set[str]] = {}
        for source, target in workflow.get_graph_edges():
            upstream.setdefault(target, set()).add(source)
        entries = []
        for task in workflow.tasks():
            assert isinstance(task, CodeTask)
            waits = upstream.get(task.task_id, set()) - completed
            after = frozenset() if task.task_id in ready else frozenset(waits)
            runtime = code_task_runtime(self.run_id, task, self.priority)
            entries.append(RunTaskData(runtime, after))
        history = tuple(e.event for e in self.log.events())
        self._bus.send_to_scheduler(
            Message(
                MessageType.RUN_TASKS,
                RunTasksData(tuple(entries), self.run_id, workflow.workflow_id, history),
            )
        )

    def apply(self, event: RunEvent) -> None:
        self.log.append(event)
        if isinstance(event, RunFinished):
            self._observer.run_finished(self.run_id, self.workflow.workflow_id, event.status.value)
            self._on_finished(self)

    def cancel(self) -> None:
        """Cancel the run: queued and running tasks are cancelled, nothing new starts (the
        scheduler decides and reports each task)."""
        if not self.finished:
            self._bus.send_to_scheduler(
                Message(MessageType.STOP_WORKFLOW, RunControlData(self.run_id))
            )

    def abort(self, reason: str) -> None:
        """End the run at once (the server is shutting down and its scheduler with it): every
        open task is recorded cancelled, then the run."""
        if self.finished:
            return
        state = self.log.state
        for task_id, task in list(state.tasks.items()):
            if not task.status.terminal:
                self.apply(TaskCancelled(self.run_id, state.workflow_id, task_id, task.task_name))
        self.apply(
            RunFinished(self.run_id, state.workflow_id, RunStatus.CANCELLED, state.counts(), reason)
        )

    async def wait_complete(self) -> list[dict[str, Any]]:
        await self.log.wait_closed()
        return [e.to_message() for e in self.log.events()]


class SingleTaskContext(BaseContext):
    """One call of a LangGraph node: resolves a future with the encoded result or the error."""

    def __init__(self, task_id: str, call_id: str) -> None:
        self.task_id = task_id
        self.run_id = call_id
        self.node_id = ""
        self._future: asyncio.Future[tuple[Any, TaskErrorInfo | None]] = (
            asyncio.get_running_loop().create_future()
        )

    def apply(self, event: RunEvent) -> None:
        if isinstance(event, TaskStarted):
            self.node_id = event.node_id
        elif isinstance(event, TaskFinished):
            self._resolve(event.result, None)
        elif isinstance(event, TaskFailed):
            self._resolve(None, event.error)
        elif isinstance(event, TaskCancelled):
            error = TaskErrorInfo.framework(
                ErrorKind.TASK_CANCELLED.value, f"task {self.task_id} was cancelled"
            )
            self._resolve(None, error)

    def _resolve(self, encoded: Any, error: TaskErrorInfo | None) -> None:
        if not self._future.done():
            self._future.set_result((encoded, error))

    async def wait_result(self) -> tuple[Any, TaskErrorInfo | None]:
        """``(encoded_result, None)`` on success, ``(None, error)`` on failure."""
        return await asyncio.shield(self._future)
