"""Runtime state of runs: task statuses, "task_id.output_key" lookups, input resolution."""

from __future__ import annotations

from typing import Any

import cloudpickle
import pytest

from lattice.core.orchestrator.context import code_task_runtime
from lattice.core.resource.node import SelectedNode
from lattice.core.run.state import TaskStatus
from lattice.core.runtime.task import CodeTaskRuntime, LangGraphTaskRuntime
from lattice.core.runtime.workflow import WorkflowRuntimeManager
from lattice.core.scheduler.pending import PendingItem
from lattice.core.scheduler.submission import build_submission, split_outcome
from lattice.core.workflow.base import CodeTask, CodeTaskConfig, Workflow
from lattice.core.workflow.inputs import TaskRef
from lattice.exceptions import InvalidReferenceError
from lattice.executor.base import TaskKind, TaskOutcome
from lattice.serialization import dumps_b64
from lattice.vocabulary import BatchConfig, TaskResourceRequirements

NODE = SelectedNode("n1", "10.0.0.1")


def add(params: dict[str, Any]) -> dict[str, Any]:
    return {"sum": params["a"] + params["b"]}


CODE = cloudpickle.dumps(add)


def rt(
    task_id: str,
    run_id: str = "r1",
    *,
    upstream: tuple[tuple[str, TaskRef], ...] = (),
    user_inputs: dict[str, Any] | None = None,
) -> CodeTaskRuntime:
    return CodeTaskRuntime(
        run_id=run_id,
        workflow_id="wf",
        task_id=task_id,
        task_name=f"name-{task_id}",
        code=CODE,
        code_id="cid",
        requirements=TaskResourceRequirements(cpu=0.5),
        outputs=("sum",),
        user_inputs=user_inputs or {},
        upstream=upstream,
    )


def completed(
    manager: WorkflowRuntimeManager, task_id: str, result: Any, run_id: str = "r1"
) -> None:
    task = rt(task_id, run_id)
    manager.add_task(task)
    manager.set_task_result(task, result)


# --- statuses ---------------------------------------------------------------------------------


def test_terminal_statuses() -> None:
    terminal = {s for s in TaskStatus if s.terminal}

    assert terminal == {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.SKIPPED,
    }
    assert TaskStatus("skipped") is TaskStatus.SKIPPED


def test_a_task_runtime_key_is_unique_across_runs() -> None:
    assert rt("t", "r1").key == "r1/t"
    assert rt("t", "r1").key != rt("t", "r2").key


def test_code_and_langgraph_task_runtimes() -> None:
    plain = rt("t")
    batched = rt("u")
    batched.batch = BatchConfig(4, 0.1)
    graph_node = LangGraphTaskRuntime(
        run_id="call-1",
        workflow_id="wf",
        task_id="g",
        task_name="node",
        code=CODE,
        code_id="cid",
        requirements=TaskResourceRequirements(),
        serialized_args=cloudpickle.dumps((1, 2)),
    )

    assert not plain.is_batchable and batched.is_batchable
    assert (plain.attempts, graph_node.attempts) == (0, 0)
    assert cloudpickle.loads(graph_node.serialized_args) == (1, 2)


# --- result lookup ----------------------------------------------------------------------------


def test_lookup_by_reference_string_and_by_task_ref() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "a", {"sum": 3, "other": [1]})

    assert m.get_task_result_value("r1", "a.sum") == 3
    assert m.get_task_result_value("r1", TaskRef("a", "other")) == [1]


def test_lookup_of_a_task_without_a_result_names_the_task_and_the_key() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "a", {"sum": 3})

    with pytest.raises(InvalidReferenceError) as caught:
        m.get_task_result_value("r1", "ghost.sum")

    assert str(caught.value) == "reference ghost.sum: task ghost has no result in this run"


def test_lookup_of_a_missing_output_key_names_both_and_lists_the_outputs() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "a", {"sum": 3, "diff": 1})

    with pytest.raises(InvalidReferenceError) as caught:
        m.get_task_result_value("r1", "a.product")

    assert str(caught.value) == (
        "reference a.product: task a has no output 'product' (its outputs: ['diff', 'sum'])"
    )


def test_lookup_into_a_result_that_is_not_a_dict() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "a", 42)

    with pytest.raises(
        InvalidReferenceError, match=r"task a has no output 'sum' \(its outputs: \[\]\)"
    ):
        m.get_task_result_value("r1", "a.sum")


def test_lookup_of_a_malformed_reference() -> None:
    with pytest.raises(InvalidReferenceError, match=r"must be 'task_id\.output_key'"):
        WorkflowRuntimeManager().get_task_result_value("r1", "nodot")


def test_runs_never_see_each_others_results() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "a", {"sum": 1}, run_id="r1")
    completed(m, "a", {"sum": 2}, run_id="r2")

    assert m.get_task_result_value("r1", "a.sum") == 1
    assert m.get_task_result_value("r2", "a.sum") == 2
    with pytest.raises(InvalidReferenceError, match="task a has no result"):
        m.get_task_result_value("r3", "a.sum")


def test_clearing_a_run_forgets_its_results_only() -> None:
    m = WorkflowRuntimeManager()
    done, other_run = rt("done"), rt("done", run_id="r2")
    for t in (done, other_run):
        m.add_task(t)
    m.set_task_result(done, {"sum": 0})
    m.set_task_result(other_run, {"sum": 5})

    assert "r1" in m
    m.clear_workflow("r1")
    assert "r1" not in m and "r2" in m
    with pytest.raises(InvalidReferenceError):
        m.get_task_result_value("r1", "done.sum")
    assert m.get_task_result_value("r2", "done.sum") == 5
    # A result reported after its run was cleared (cancelled meanwhile) is dropped.
    m.set_task_result(done, {"sum": 1})
    assert "r1" not in m


# --- input resolution -------------------------------------------------------------------------


def test_a_code_task_runtime_splits_user_values_from_task_references() -> None:
    wf = Workflow("wf")
    for tid in ("src", "t"):
        wf.add_task(tid, CodeTask("wf", tid, tid))
    wf.save_task(
        "src",
        CodeTaskConfig(
            task_input=None,
            task_output={"output_params": {"0": {"key": "out"}}},
            code_str=None,
            serialized_code=dumps_b64(add),
            resources={"cpu": 0.25},
        ),
        add_edges=True,
    )
    wf.save_task(
        "t",
        CodeTaskConfig(
            task_input={
                "input_params": {
                    "0": {"key": "a", "input_schema": "from_user", "value": 5},
                    "1": {"key": "b", "input_schema": "from_task", "value": "src.out"},
                }
            },
            task_output={"output_params": {"0": {"key": "sum"}}},
            code_str=None,
            serialized_code=dumps_b64(add),
            resources={"cpu": 0.25},
            priority=1,
        ),
        add_edges=True,
    )

    runtime = code_task_runtime("run-1", wf.get_code_task("t"))

    assert runtime.user_inputs == {"a": 5}
    assert runtime.upstream == (("b", TaskRef("src", "out")),)
    assert runtime.outputs == ("sum",)
    assert (runtime.run_id, runtime.priority, runtime.requirements.cpu) == ("run-1", 1, 0.25)
    assert cloudpickle.loads(runtime.code)({"a": 1, "b": 2}) == {"sum": 3}


def test_build_submission_resolves_references_in_the_tasks_own_run() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "src", {"out": 10}, run_id="r1")
    completed(m, "src", {"out": 20}, run_id="r2")
    task = rt("t", "r2", upstream=(("b", TaskRef("src", "out")),), user_inputs={"a": 1})
    m.add_task(task)

    sub = build_submission("r2/t", PendingItem([task], task.requirements, 2), NODE, m)

    assert sub.kind is TaskKind.CODE
    assert sub.user_inputs == {"a": 1}
    assert sub.upstream_inputs == {"b": 20}
    assert (sub.task_key, sub.task_name, sub.node, sub.outputs) == (
        "r2/t",
        "name-t",
        NODE,
        ("sum",),
    )


def test_build_submission_fails_on_a_reference_the_run_cannot_resolve() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "src", {"out": 10})
    task = rt("t", upstream=(("b", TaskRef("src", "missing")),))

    with pytest.raises(InvalidReferenceError, match=r"task src has no output 'missing'"):
        build_submission("r1/t", PendingItem([task], task.requirements, 2), NODE, m)


def test_a_batched_submission_carries_one_input_set_per_task() -> None:
    m = WorkflowRuntimeManager()
    completed(m, "src", {"out": 7})
    tasks = [
        rt("x", user_inputs={"a": 1}, upstream=(("b", TaskRef("src", "out")),)),
        rt("y", user_inputs={"a": 2, "b": 3}),
    ]
    item = PendingItem(list(tasks), tasks[0].requirements, 2, batched=True)

    sub = build_submission("batch/1", item, NODE, m)

    assert sub.kind is TaskKind.BATCH
    assert sub.user_inputs == [{"a": 1}, {"a": 2, "b": 3}]
    assert sub.upstream_inputs == [{"b": 7}, {}]
    pairs = split_outcome(
        item.tasks, True, TaskOutcome(value=[{"sum": 8}, {"sum": 5}]), ["e8", "e5"]
    )
    assert [(t.task_id, v, e) for t, v, e in pairs] == [
        ("x", {"sum": 8}, "e8"),
        ("y", {"sum": 5}, "e5"),
    ]


def test_a_langgraph_submission_carries_its_pickled_arguments() -> None:
    task = LangGraphTaskRuntime(
        run_id="call-1",
        workflow_id="wf",
        task_id="g",
        task_name="node",
        code=CODE,
        code_id="cid",
        requirements=TaskResourceRequirements(),
        serialized_args=b"args",
        serialized_kwargs=b"kwargs",
    )

    sub = build_submission(
        "call-1/g", PendingItem([task], task.requirements, 2), NODE, WorkflowRuntimeManager()
    )

    assert (sub.kind, sub.args, sub.kwargs) == (TaskKind.LANGGRAPH, b"args", b"kwargs")
