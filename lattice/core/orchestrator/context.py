"""Execution contexts: one workflow run (RunContext) or one LangGraph call (SingleTaskContext).

Both live on the event loop thread and are fed scheduler messages by the orchestrator.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from lattice.core.observer import EngineObserver
from lattice.core.orchestrator import events as ev
from lattice.core.runtime.task import CodeTaskRuntime, TaskStatus
from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    RunControlData,
    RunTaskData,
    RunTasksData,
    TaskCancelledData,
    TaskFailedData,
    TaskFinishedData,
    TaskStartedData,
)
from lattice.core.workflow.base import CodeTask, Workflow
from lattice.core.workflow.inputs import InputSchema
from lattice.exceptions import TaskErrorInfo


class BaseContext(ABC):
    run_id: str

    @abstractmethod
    def on_task_started(self, data: TaskStartedData) -> None: ...

    @abstractmethod
    def on_task_finished(self, data: TaskFinishedData) -> None: ...

    @abstractmethod
    def on_task_failed(self, data: TaskFailedData) -> None: ...

    @abstractmethod
    def on_task_cancelled(self, data: TaskCancelledData) -> None: ...


def code_task_runtime(run_id: str, task: CodeTask) -> CodeTaskRuntime:
    assert task.code is not None, "run_workflow checks every task is saved"
    return CodeTaskRuntime(
        run_id=run_id,
        workflow_id=task.workflow_id,
        task_id=task.task_id,
        task_name=task.task_name,
        code=task.code,
        code_id=task.code_id,
        requirements=task.requirements,
        priority=task.priority,
        sandbox=task.sandbox,
        outputs=task.outputs,
        user_inputs={p.key: p.value for p in task.inputs if p.schema is InputSchema.FROM_USER},
        upstream=tuple((p.key, p.ref) for p in task.inputs if p.ref is not None),
        batch=task.batch,
    )


class RunContext(BaseContext):
    """One run of a workflow: submits tasks as their inputs become ready, records every change
    in the run's log, skips the dependants of a failed task, and ends the run."""

    def __init__(
        self,
        run_id: str,
        workflow: Workflow,
        message_bus: MessageBus,
        log: ev.RunLog,
        observer: EngineObserver,
        on_finished: Callable[[RunContext], None],
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.log = log
        self._bus = message_bus
        self._observer = observer
        self._on_finished = on_finished
        self._status: dict[str, TaskStatus] = {
            t.task_id: TaskStatus.PENDING for t in workflow.tasks()
        }
        self._open = len(self._status)
        self._cancelling = False

    @property
    def finished(self) -> bool:
        return self.log.closed

    def submit_start_tasks(self) -> None:
        """Hand every task of the run to the scheduler: the start tasks to run now, the
        others with the tasks they wait for (the scheduler releases each one the moment its
        last upstream task finishes; see scheduler.waiting)."""
        entries = []
        for task in self.workflow.tasks():
            assert isinstance(task, CodeTask)
            after = frozenset(self.workflow.predecessors(task.task_id))
            if not after:
                self._status[task.task_id] = TaskStatus.READY
            entries.append(RunTaskData(code_task_runtime(self.run_id, task), after))
        if entries:
            self._bus.send_to_scheduler(
                Message(MessageType.RUN_TASKS, RunTasksData(tuple(entries)))
            )
        self._maybe_finish()

    def _settle(self, task_id: str, status: TaskStatus) -> bool:
        """Move a task to a terminal status once; False if it already had one."""
        if self._status.get(task_id, TaskStatus.COMPLETED).terminal:
            return False
        self._status[task_id] = status
        self._open -= 1
        return True

    # --- scheduler events -------------------------------------------------------------------

    def on_task_started(self, data: TaskStartedData) -> None:
        status = self._status.get(data.task_id)
        # A task dispatched again after its node was lost starts again, on another node: the
        # client is told where it runs now (the message then carries ``attempt``).
        redispatched = status is TaskStatus.RUNNING and data.attempt > 1
        if status not in (TaskStatus.PENDING, TaskStatus.READY) and not redispatched:
            return
        self._status[data.task_id] = TaskStatus.RUNNING
        message: dict[str, Any] = {
            "workflow_id": data.workflow_id,
            "task_id": data.task_id,
            "task_name": data.task_name,
            "node_ip": data.node_ip,
            "node_id": data.node_id,
            "gpu_ids": list(data.gpu_ids),
        }
        if redispatched:
            message["attempt"] = data.attempt
        self.log.append(ev.START_TASK, message)

    def on_task_finished(self, data: TaskFinishedData) -> None:
        if not self._settle(data.task_id, TaskStatus.COMPLETED):
            return
        self.log.append(
            ev.FINISH_TASK,
            {
                "workflow_id": data.workflow_id,
                "task_id": data.task_id,
                "task_name": data.task_name,
                "result": data.encoded,
            },
        )
        self._maybe_finish()

    def on_task_failed(self, data: TaskFailedData) -> None:
        if not self._settle(data.task_id, TaskStatus.FAILED):
            return
        self.log.append(
            ev.TASK_EXCEPTION,
            {
                "workflow_id": data.workflow_id,
                "task_id": data.task_id,
                "task_name": data.task_name,
                "error": data.error.to_dict(),
            },
        )
        self._skip_dependants(
            data.task_id, f"upstream task {data.task_name} ({data.task_id}) failed"
        )
        self._maybe_finish()

    def on_task_cancelled(self, data: TaskCancelledData) -> None:
        self._cancel_one(data.task_id)
        if not self._cancelling:
            self._skip_dependants(data.task_id, f"upstream task {data.task_id} was cancelled")
        self._maybe_finish()

    def _cancel_one(self, task_id: str) -> None:
        if self._settle(task_id, TaskStatus.CANCELLED):
            self.log.append(
                ev.TASK_CANCELLED, {"workflow_id": self.workflow.workflow_id, "task_id": task_id}
            )

    def _skip_dependants(self, task_id: str, reason: str) -> None:
        for dep in sorted(self.workflow.descendants(task_id)):
            if self._settle(dep, TaskStatus.SKIPPED):
                self.log.append(
                    ev.TASK_SKIPPED,
                    {"workflow_id": self.workflow.workflow_id, "task_id": dep, "reason": reason},
                )

    # --- control ----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Cancel the run: queued and running tasks are cancelled, nothing new starts."""
        if self.finished or self._cancelling:
            return
        self._cancelling = True
        self._bus.send_to_scheduler(Message(MessageType.STOP_WORKFLOW, RunControlData(self.run_id)))
        for task_id, status in list(self._status.items()):
            if status is TaskStatus.PENDING:
                self._cancel_one(task_id)
        self._maybe_finish()

    def abort(self, reason: str) -> None:
        """End the run at once (server shutting down): every open task is cancelled."""
        if self.finished:
            return
        self._cancelling = True
        for task_id, status in list(self._status.items()):
            if not status.terminal:
                self._cancel_one(task_id)
        self._finish(ev.CANCELLED, reason)

    def _maybe_finish(self) -> None:
        if self._open == 0 and not self.finished:
            statuses = set(self._status.values())
            if TaskStatus.FAILED in statuses:
                outcome = ev.FAILED
            elif self._cancelling or TaskStatus.CANCELLED in statuses:
                outcome = ev.CANCELLED
            else:
                outcome = ev.COMPLETED
            self._finish(outcome)

    def _finish(self, outcome: str, reason: str | None = None) -> None:
        counts: dict[str, int] = {}
        for status in self._status.values():
            counts[status.value] = counts.get(status.value, 0) + 1
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "workflow_id": self.workflow.workflow_id,
            "status": outcome,
            "success": outcome == ev.COMPLETED,
            "tasks": counts,
        }
        if reason:
            data["reason"] = reason
        self.log.append(ev.FINISH_WORKFLOW, data)
        self._bus.send_to_scheduler(
            Message(MessageType.CLEAR_WORKFLOW, RunControlData(self.run_id))
        )
        self._observer.run_finished(self.run_id, self.workflow.workflow_id, outcome)
        self._on_finished(self)

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

    def on_task_started(self, data: TaskStartedData) -> None:
        self.node_id = data.node_id

    def on_task_finished(self, data: TaskFinishedData) -> None:
        if not self._future.done():
            self._future.set_result((data.encoded, None))

    def on_task_failed(self, data: TaskFailedData) -> None:
        if not self._future.done():
            self._future.set_result((None, data.error))

    def on_task_cancelled(self, data: TaskCancelledData) -> None:
        if not self._future.done():
            self._future.set_result(
                (
                    None,
                    TaskErrorInfo.framework(
                        "TaskCancelledError", f"task {self.task_id} was cancelled"
                    ),
                )
            )

    async def wait_result(self) -> tuple[Any, TaskErrorInfo | None]:
        """``(encoded_result, None)`` on success, ``(None, error)`` on failure."""
        return await asyncio.shield(self._future)
