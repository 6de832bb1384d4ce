"""Per-run runtime state kept by the scheduler core: each run's tasks and their results.

Runtime state is keyed by run id (not workflow id as in spec/000 §6.2) so that two runs of one
workflow never read each other's results. Statuses are not kept here: they are the run's
(:mod:`lattice.core.run.state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lattice.core.runtime.task import BaseTaskRuntime
from lattice.core.workflow.inputs import TaskRef
from lattice.exceptions import InvalidReferenceError
from lattice.serialization import PICKLE_KEY, WireValue


@dataclass(frozen=True)
class RecordedOutputs:
    """A task's outputs as its run's log recorded them (wire form), for a run resumed after a
    restart: its dependants get :class:`~lattice.serialization.WireValue` inputs, decoded where
    they run."""

    encoded: Any

    def output(self, ref: TaskRef) -> WireValue:
        encoded = self.encoded
        if isinstance(encoded, dict) and not _is_leaf(encoded):
            if ref.output_key not in encoded:
                raise InvalidReferenceError(
                    f"reference {ref}: task {ref.task_id} has no output {ref.output_key!r} "
                    f"(its outputs: {sorted(encoded)})"
                )
            return WireValue(encoded[ref.output_key])
        return WireValue(encoded, ref.output_key)


def _is_leaf(encoded: dict[str, Any]) -> bool:
    return len(encoded) == 1 and PICKLE_KEY in encoded


@dataclass
class WorkflowRuntime:
    run_id: str
    workflow_id: str
    tasks: dict[str, BaseTaskRuntime] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


class WorkflowRuntimeManager:
    def __init__(self) -> None:
        self._runs: dict[str, WorkflowRuntime] = {}

    def add_task(self, task: BaseTaskRuntime) -> None:
        run = self._runs.get(task.run_id)
        if run is None:
            run = self._runs[task.run_id] = WorkflowRuntime(task.run_id, task.workflow_id)
        run.tasks[task.task_id] = task

    def set_task_result(self, task: BaseTaskRuntime, result: Any) -> None:
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
        if isinstance(outputs, RecordedOutputs):
            return outputs.output(ref)
        if not isinstance(outputs, dict) or ref.output_key not in outputs:
            keys = sorted(outputs) if isinstance(outputs, dict) else []
            raise InvalidReferenceError(
                f"reference {ref}: task {ref.task_id} has no output {ref.output_key!r} "
                f"(its outputs: {keys})"
            )
        return outputs[ref.output_key]

    def clear_workflow(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs
