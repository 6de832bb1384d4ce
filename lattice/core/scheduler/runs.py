"""What the scheduler core knows of each live run, and the events it decides about them.

:class:`RunBook` keeps, per run, its :class:`~lattice.core.run.state.RunState` (the fold of
the events emitted so far), its DAG (for skips), its tasks' results (for their dependants) and
the tasks that wait for their inputs. Every event goes through :meth:`RunBook.emit`, which
folds it into the run's state before it becomes an ``Emit`` command, and finishes the run once
its last task has ended. Pure: it appends commands to the list it is given and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lattice.core.run.events import (
    RunEvent,
    RunFinished,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskSkipped,
)
from lattice.core.run.state import RunState, TaskStatus
from lattice.core.runtime.task import BaseTaskRuntime
from lattice.core.runtime.workflow import RecordedOutputs, WorkflowRuntimeManager
from lattice.core.scheduler.commands import Command, Emit
from lattice.core.scheduler.messages import RunTaskData
from lattice.core.scheduler.waiting import WaitingTasks
from lattice.exceptions import InvalidReferenceError, TaskErrorInfo
from lattice.vocabulary import ErrorKind


@dataclass(eq=False)
class _Run:
    state: RunState
    #: task id -> ids of the tasks that depend on it directly (the run's DAG, for skips)
    children: dict[str, list[str]] = field(default_factory=dict)
    cancelling: bool = False
    #: tasks cancelled one by one while they run: their outcome is reported cancelled
    cancelled_tasks: set[str] = field(default_factory=set)
    #: takes tasks one at a time (RUN_TASK) and ends only when cleared
    open_ended: bool = False


class RunBook:
    def __init__(self, out: list[Command]) -> None:
        self._out = out
        self._runs: dict[str, _Run] = {}
        #: each run's tasks and raw results
        self.runtime = WorkflowRuntimeManager()
        #: tasks whose upstream tasks have not all finished
        self.waiting = WaitingTasks()

    # --- runs coming and going --------------------------------------------------------------

    def start(
        self,
        run_id: str,
        workflow_id: str,
        entries: tuple[RunTaskData, ...],
        history: tuple[RunEvent, ...] = (),
    ) -> list[BaseTaskRuntime]:
        """A run handed over whole: it finishes when the last of its tasks has ended. Returns
        the tasks that are ready now.

        ``history``: the run's recorded events, for a run resumed after a restart. The run
        starts from their fold: a task with a recorded outcome is never handed out again (a
        finished one's recorded outputs feed its dependants), a task recorded started (or
        not yet) runs, its next start counting on from the recorded attempt; dependants of a
        task recorded failed or cancelled that the log does not show skipped are skipped now.
        """
        if run_id in self._runs:
            raise ValueError(f"run {run_id} was handed over twice")
        tasks = [(e.task.task_id, e.task.task_name) for e in entries]
        run = self._runs[run_id] = _Run(RunState.replay(run_id, workflow_id, tasks, history))
        ready: list[BaseTaskRuntime] = []
        for entry in entries:
            recorded = run.state.task(entry.task.task_id)
            entry.task.attempts = recorded.attempt
            if not recorded.status.terminal:
                if self._add(run, entry):
                    ready.append(entry.task)
            elif recorded.status is TaskStatus.COMPLETED:
                self.runtime.add_task(entry.task)
                self.runtime.set_task_result(entry.task, RecordedOutputs(recorded.result))
        for task_id, recorded in list(run.state.tasks.items()):
            if recorded.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                self.waiting.drop_after(run_id, task_id)
                verb = "failed" if recorded.status is TaskStatus.FAILED else "was cancelled"
                reason = f"upstream task {recorded.task_name} ({task_id}) {verb}"
                self._skip_dependants(run, task_id, reason)
        ready = [t for t in ready if not run.state.is_terminal(t.task_id)]
        self._maybe_finish(run)
        return ready

    def add_one(self, entry: RunTaskData) -> bool:
        """One more task of an open-ended run (a LangGraph node call is one): such a run takes
        tasks one at a time, never finishes by itself and is forgotten on ``CLEAR_WORKFLOW``;
        its results stay readable by its later tasks until then. True if it is ready now."""
        task = entry.task
        run = self._runs.get(task.run_id)
        if run is None:
            state = RunState(task.run_id, task.workflow_id, ())
            run = self._runs[task.run_id] = _Run(state, open_ended=True)
        if not run.open_ended:
            raise ValueError(f"run {task.run_id} was handed over whole; it takes no more tasks")
        run.state.add_task(task.task_id, task.task_name)
        return self._add(run, entry)

    def _add(self, run: _Run, entry: RunTaskData) -> bool:
        task = entry.task
        for upstream in entry.after:
            run.children.setdefault(upstream, []).append(task.task_id)
        self.runtime.add_task(task)
        if entry.after:
            self.waiting.add(task, entry.after)
            return False
        return True

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        self.waiting.drop_run(run_id)
        self.runtime.clear_workflow(run_id)

    def _maybe_finish(self, run: _Run) -> None:
        state = run.state
        if state.all_terminal and state.finished is None and not run.open_ended:
            outcome = state.outcome(run.cancelling)
            self.emit(RunFinished(state.run_id, state.workflow_id, outcome, state.counts()))
            self.forget(state.run_id)

    # --- reading ----------------------------------------------------------------------------

    def state(self, run_id: str) -> RunState | None:
        run = self._runs.get(run_id)
        return None if run is None else run.state

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    def cancelling(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is not None and run.cancelling

    def live(self, task: BaseTaskRuntime) -> bool:
        """Whether the run still wants ``task``'s outcome."""
        run = self._runs.get(task.run_id)
        return (
            run is not None
            and not run.cancelling
            and task.task_id not in run.cancelled_tasks
            and not run.state.is_terminal(task.task_id)
        )

    def cancel_task(self, run_id: str, task_id: str) -> bool:
        """Mark ``task_id`` cancelled by itself: whatever it reports is reported cancelled.
        False if the run or task is unknown or has ended."""
        run = self._runs.get(run_id)
        if run is None or run.state.is_terminal(task_id):
            return False
        run.cancelled_tasks.add(task_id)
        return True

    def unresolved_reference(self, task: BaseTaskRuntime) -> TaskErrorInfo | None:
        """The error of an input that names a task or output the run does not have."""
        try:
            for _, ref in getattr(task, "upstream", ()):
                self.runtime.get_task_result_value(task.run_id, ref)
        except InvalidReferenceError as exc:
            return TaskErrorInfo.framework(ErrorKind.INVALID_REFERENCE.value, str(exc))
        return None

    # --- events -----------------------------------------------------------------------------

    def emit(self, event: RunEvent) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return  # the run is over (a late report after it was cancelled or cleared)
        run.state.apply(event)
        self._out.append(Emit(event))
        if not isinstance(event, RunFinished):
            self._maybe_finish(run)

    def finished(
        self, task: BaseTaskRuntime, value: Any, encoded: Any, node_id: str, duration: float
    ) -> list[BaseTaskRuntime]:
        """``task`` finished with ``value``: its dependants that are ready now."""
        self.runtime.set_task_result(task, value)
        self.emit(
            TaskFinished(
                task.run_id,
                task.workflow_id,
                task.task_id,
                task.task_name,
                encoded,
                node_id=node_id,
                duration=duration,
            )
        )
        return self.waiting.finished(task.run_id, task.task_id)

    def fail(
        self, task: BaseTaskRuntime, error: TaskErrorInfo, node_id: str, duration: float = 0.0
    ) -> None:
        """``task`` failed: every task that depends on it is skipped, naming it."""
        run = self._runs.get(task.run_id)
        if run is None or run.state.is_terminal(task.task_id):
            return
        self.waiting.drop_after(task.run_id, task.task_id)
        self.emit(
            TaskFailed(
                task.run_id,
                task.workflow_id,
                task.task_id,
                task.task_name,
                error,
                node_id=node_id,
                duration=duration,
            )
        )
        reason = f"upstream task {task.task_name} ({task.task_id}) failed"
        self._skip_dependants(run, task.task_id, reason)

    def cancelled(self, task: BaseTaskRuntime, node_id: str) -> None:
        """``task`` was cancelled (its run is being cancelled, or it alone)."""
        run = self._runs.get(task.run_id)
        if run is None or run.state.is_terminal(task.task_id):
            return
        self.waiting.drop_after(task.run_id, task.task_id)
        self.emit(
            TaskCancelled(task.run_id, task.workflow_id, task.task_id, task.task_name, node_id)
        )
        if not run.cancelling:
            self._skip_dependants(run, task.task_id, f"upstream task {task.task_id} was cancelled")

    def _skip_dependants(self, run: _Run, task_id: str, reason: str) -> None:
        seen: set[str] = set()
        stack = list(run.children.get(task_id, ()))
        while stack:
            child = stack.pop()
            if child not in seen:
                seen.add(child)
                stack.extend(run.children.get(child, ()))
        state = run.state
        for dep in sorted(seen):
            if not state.is_terminal(dep):
                self.emit(TaskSkipped(state.run_id, state.workflow_id, dep, reason))

    def cancel(self, run_id: str) -> bool:
        """Start cancelling ``run_id``: what waits for its inputs and what has not started is
        cancelled now (the caller has taken the queued ones out of its queues). False if the
        run is unknown or already being cancelled."""
        run = self._runs.get(run_id)
        if run is None or run.cancelling:
            return False
        run.cancelling = True
        self.waiting.drop_run(run_id)
        state = run.state
        for task_id, task in list(state.tasks.items()):
            if task.status is TaskStatus.PENDING:
                self.emit(TaskCancelled(run_id, state.workflow_id, task_id, task.task_name))
        return True

    def fail_open_tasks(self, run_id: str, error: TaskErrorInfo) -> None:
        """Every task of ``run_id`` that has not ended fails with ``error``."""
        run = self._runs.get(run_id)
        if run is None:
            return
        self.waiting.drop_run(run_id)
        state = run.state
        for task_id, task in list(state.tasks.items()):
            if not task.status.terminal:
                self.emit(TaskFailed(run_id, state.workflow_id, task_id, task.task_name, error))
