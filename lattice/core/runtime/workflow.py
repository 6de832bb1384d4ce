"""Per-run runtime state kept by the scheduler: running tasks and their results.

Runtime state is keyed by run id (not workflow id as in spec/000 §6.2) so that two runs of one
workflow never read each other's results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lattice.core.resource.node import SelectedNode
from lattice.core.runtime.task import BaseTaskRuntime, TaskStatus
from lattice.core.workflow.inputs import TaskRef
from lattice.exceptions import InvalidReferenceError


@dataclass
class WorkflowRuntime:
    run_id: str
    workflow_id: str
    tasks: dict[str, BaseTaskRuntime] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


class WorkflowRuntimeManager:
    def __init__(self) -> None:
        self._runs: dict[str, WorkflowRuntime] = {}

    def _run(self, task: BaseTaskRuntime) -> WorkflowRuntime:
        run = self._runs.get(task.run_id)
        if run is None:
            run = self._runs[task.run_id] = WorkflowRuntime(task.run_id, task.workflow_id)
        return run

    def add_task(self, task: BaseTaskRuntime) -> None:
        self._run(task).tasks[task.task_id] = task

    def run_task(self, task: BaseTaskRuntime, handle_id: str, node: SelectedNode) -> None:
        task.status = TaskStatus.RUNNING
        task.selected_node = node

    def set_task_result(self, task: BaseTaskRuntime, result: Any) -> None:
        task.status = TaskStatus.COMPLETED
        run = self._runs.get(task.run_id)
        if run is not None:  # else the run is over (cancelled while this task ran)
            run.results[task.task_id] = result

    def get_task_result_value(self, run_id: str, ref: TaskRef | str) -> Any:
        """The value of ``"task_id.output_key"`` in run ``run_id``.

        Raises InvalidReferenceError naming the task and key when either does not exist.
        """
        if isinstance(ref, str):
            ref = TaskRef.parse(ref, "reference")
        run = self._runs.get(run_id)
        results = run.results if run else {}
        if ref.task_id not in results:
            raise InvalidReferenceError(
                f"reference {ref}: task {ref.task_id} has no result in this run"
            )
        outputs = results[ref.task_id]
        if not isinstance(outputs, dict) or ref.output_key not in outputs:
            keys = sorted(outputs) if isinstance(outputs, dict) else []
            raise InvalidReferenceError(
                f"reference {ref}: task {ref.task_id} has no output {ref.output_key!r} "
                f"(its outputs: {keys})"
            )
        return outputs[ref.output_key]

    def running_tasks(self, run_id: str) -> list[BaseTaskRuntime]:
        run = self._runs.get(run_id)
        if run is None:
            return []
        return [t for t in run.tasks.values() if t.status is TaskStatus.RUNNING]

    def cancel_workflow(self, run_id: str) -> list[BaseTaskRuntime]:
        """Mark the run's unfinished tasks cancelled; return those that were running."""
        running = self.running_tasks(run_id)
        run = self._runs.get(run_id)
        if run is not None:
            for t in run.tasks.values():
                if not t.status.terminal:
                    t.status = TaskStatus.CANCELLED
        return running

    def is_cancelled(self, run_id: str, task_id: str) -> bool:
        run = self._runs.get(run_id)
        task = run.tasks.get(task_id) if run else None
        return task is not None and task.status is TaskStatus.CANCELLED

    def clear_workflow(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs
