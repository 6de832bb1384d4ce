"""Turning queued tasks into executor submissions, and outcomes back into per-task results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lattice.core.resource.node import SelectedNode
from lattice.core.runtime.task import BaseTaskRuntime, CodeTaskRuntime, LangGraphTaskRuntime
from lattice.core.runtime.workflow import WorkflowRuntimeManager
from lattice.core.scheduler.commands import AwaitOutput
from lattice.core.scheduler.pending import PendingItem
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import (
    TaskKind,
    TaskOutcome,
    TaskSubmission,
)
from lattice.executor.runner import error_info
from lattice.serialization import encode_value
from lattice.vocabulary import TaskAttempt


def _inputs(
    task: CodeTaskRuntime, runtime: WorkflowRuntimeManager, running: Mapping[str, str]
) -> dict[str, Any]:
    return {
        key: AwaitOutput(running[ref.task_id], ref.output_key)
        if ref.task_id in running
        else runtime.get_task_result_value(task.run_id, ref)
        for key, ref in task.upstream
    }


def build_submission(
    key: str,
    item: PendingItem,
    node: SelectedNode,
    runtime: WorkflowRuntimeManager,
    running: Mapping[str, str] | None = None,
) -> TaskSubmission:
    """Resolve inputs and build the submission. Raises InvalidReferenceError when an input
    names a task or output key the run does not have.

    ``running``: upstream task id -> key of its submission, for upstream tasks still running
    (their outputs become :class:`AwaitOutput` inputs, which the scheduler thread turns into
    the executor's PendingOutput; see ExecutorBackend.pipelines)."""
    running = running or {}
    first = item.tasks[0]
    common: dict[str, Any] = {
        "task_key": key,
        "task_name": first.task_name,
        "code": first.code,
        "code_id": first.code_id,
        "requirements": item.requirements,
        "node": node,
        "sandbox": first.sandbox,
    }
    if not item.batched:
        # Its start is announced after this (attempts then counts it).
        common["attempt"] = TaskAttempt(first.run_id, first.task_id, first.attempts + 1)
    if isinstance(first, LangGraphTaskRuntime):
        return TaskSubmission(
            kind=TaskKind.LANGGRAPH,
            args=first.serialized_args,
            kwargs=first.serialized_kwargs,
            **common,
        )
    assert isinstance(first, CodeTaskRuntime)
    if not item.batched:
        return TaskSubmission(
            kind=TaskKind.CODE,
            outputs=first.outputs,
            user_inputs=first.user_inputs,
            upstream_inputs=_inputs(first, runtime, running),
            **common,
        )
    tasks = [t for t in item.tasks if isinstance(t, CodeTaskRuntime)]
    return TaskSubmission(
        kind=TaskKind.BATCH,
        outputs=first.outputs,
        user_inputs=[t.user_inputs for t in tasks],
        upstream_inputs=[_inputs(t, runtime, running) for t in tasks],
        **common,
    )


def encode_outcome(kind: TaskKind, task_name: str, outcome: TaskOutcome) -> tuple[TaskOutcome, Any]:
    """Encode a successful outcome's value for the wire (one entry per task for a batch).

    Runs in the executor's callback thread, off the scheduler and the event loop. A value that
    cannot be encoded turns the outcome into that task's error: a result is never dropped.
    """
    if not outcome.ok:
        return outcome, None
    try:
        if kind is TaskKind.BATCH:
            return outcome, [encode_value(v) for v in outcome.value]
        return outcome, encode_value(outcome.value)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the result's fault
        info = error_info(exc, skip_frames=0)
        error = TaskErrorInfo(
            type="ResultEncodingError",
            message=f"result of task {task_name} cannot be serialized: {type(exc).__name__}: {exc}",
            traceback=info.traceback,
        )
        return TaskOutcome(error=error, duration=outcome.duration), None


def split_outcome(
    item_tasks: list[BaseTaskRuntime], batched: bool, outcome: TaskOutcome, encoded: Any
) -> list[tuple[BaseTaskRuntime, Any, Any]]:
    """Pair each task of a submission with its (value, encoded) result."""
    if batched:
        return list(zip(item_tasks, outcome.value, encoded, strict=True))
    return [(item_tasks[0], outcome.value, encoded)]
