"""The workflow DAG: building, editing, readiness, per-run copies, and the task types."""

from __future__ import annotations

from typing import Any

import pytest

from lattice.core.workflow.base import (
    BaseTask,
    CodeTask,
    CodeTaskConfig,
    CodeTaskDraft,
    LangGraphTask,
    TaskType,
    Workflow,
)
from lattice.core.workflow.inputs import InputSchema, TaskRef, parse_task_input
from lattice.exceptions import (
    CycleError,
    InvalidCodeError,
    InvalidReferenceError,
    InvalidResourceError,
    LatticeInputError,
    TaskNotFoundError,
    TooLargeError,
)
from lattice.serialization import dumps_b64
from lattice.vocabulary import BatchConfig


def double(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": params["x"] * 2}


CODE = dumps_b64(double)


def user(**values: Any) -> dict[str, Any]:
    return {
        "input_params": {
            str(i): {"key": k, "input_schema": "from_user", "value": v}
            for i, (k, v) in enumerate(values.items())
        }
    }


def refs(**values: str) -> dict[str, Any]:
    return {
        "input_params": {
            str(i): {"key": k, "input_schema": "from_task", "value": v}
            for i, (k, v) in enumerate(values.items())
        }
    }


def outputs(*keys: str) -> dict[str, Any]:
    return {"output_params": {str(i): {"key": k} for i, k in enumerate(keys)}}


def workflow_with(*task_ids: str) -> Workflow:
    wf = Workflow("wf")
    for tid in task_ids:
        wf.add_task(tid, CodeTask("wf", tid, f"name-{tid}"))
    return wf


def save(
    wf: Workflow,
    task_id: str,
    task_input: dict[str, Any] | None = None,
    out: tuple[str, ...] = ("y",),
    *,
    add_edges: bool = True,
    resources: dict[str, Any] | None = None,
) -> None:
    wf.save_task(
        task_id,
        CodeTaskConfig(
            task_input=task_input,
            task_output=outputs(*out),
            code_str="def double(...)",
            serialized_code=CODE,
            resources=resources,
        ),
        add_edges=add_edges,
    )


def ids(tasks: list[BaseTask]) -> list[str]:
    return sorted(t.task_id for t in tasks)


def diamond() -> Workflow:
    wf = workflow_with("a", "b", "c", "d")
    for src, dst in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]:
        wf.add_edge(src, dst)
    return wf


# --- building ---------------------------------------------------------------------------------


def test_add_task_registers_it_and_rejects_a_duplicate_id() -> None:
    wf = workflow_with("a")

    assert wf.get_task("a").task_name == "name-a"
    assert len(wf) == 1
    with pytest.raises(LatticeInputError, match="task a already exists"):
        wf.add_task("a", CodeTask("wf", "a", "again"))
    assert wf.get_task("a").task_name == "name-a"


def test_get_task_of_an_unknown_id_names_it_and_the_workflow() -> None:
    with pytest.raises(TaskNotFoundError, match="Task nope not found in workflow wf"):
        workflow_with("a").get_task("nope")


def test_add_edge_records_the_dependency_once() -> None:
    wf = workflow_with("a", "b")

    wf.add_edge("a", "b")
    wf.add_edge("a", "b")

    assert wf.get_graph_edges() == [("a", "b")]
    assert wf.predecessors("b") == ["a"]


def test_add_edge_to_an_unknown_task_is_refused() -> None:
    wf = workflow_with("a")

    with pytest.raises(TaskNotFoundError, match="ghost"):
        wf.add_edge("a", "ghost")
    assert wf.get_graph_edges() == []


def test_an_edge_closing_a_cycle_is_rolled_back_and_the_error_names_the_cycle() -> None:
    wf = workflow_with("a", "b", "c")
    wf.add_edge("a", "b")
    wf.add_edge("b", "c")

    with pytest.raises(CycleError) as caught:
        wf.add_edge("c", "a")

    assert caught.value.cycle == ["c", "a", "b", "c"]
    assert "c -> a -> b -> c" in str(caught.value)
    assert sorted(wf.get_graph_edges()) == [("a", "b"), ("b", "c")]
    # The graph is still usable: the rolled-back edge left no trace in readiness.
    assert ids(wf.get_start_tasks()) == ["a"]


def test_a_self_edge_is_a_cycle() -> None:
    wf = workflow_with("a")

    with pytest.raises(CycleError, match="a -> a"):
        wf.add_edge("a", "a")
    assert wf.get_graph_edges() == []


def test_del_edge_removes_it_and_refuses_an_edge_that_does_not_exist() -> None:
    wf = workflow_with("a", "b")
    wf.add_edge("a", "b")

    wf.del_edge("a", "b")

    assert wf.get_graph_edges() == []
    assert ids(wf.get_start_tasks()) == ["a", "b"]
    with pytest.raises(LatticeInputError, match="no edge a -> b"):
        wf.del_edge("a", "b")


def test_del_edge_refuses_an_edge_that_carries_an_input() -> None:
    wf = workflow_with("a", "b")
    save(wf, "a", user(x=1))
    save(wf, "b", refs(x="a.y"))

    with pytest.raises(LatticeInputError, match="carries input 'x' of task b"):
        wf.del_edge("a", "b")
    assert wf.get_graph_edges() == [("a", "b")]


def test_del_task_removes_the_task_with_its_edges() -> None:
    wf = workflow_with("a", "b", "c")
    wf.add_edge("a", "b")
    wf.add_edge("b", "c")

    wf.del_task("b")

    assert ids(wf.tasks()) == ["a", "c"]
    assert wf.get_graph_edges() == []
    assert ids(wf.get_start_tasks()) == ["a", "c"]
    with pytest.raises(TaskNotFoundError):
        wf.get_task("b")


def test_del_task_refuses_while_another_task_reads_its_outputs() -> None:
    wf = workflow_with("a", "b")
    save(wf, "a", user(x=1))
    save(wf, "b", refs(x="a.y"))

    with pytest.raises(LatticeInputError, match=r"task b reads a\.y through input 'x'"):
        wf.del_task("a")
    assert ids(wf.tasks()) == ["a", "b"]


def test_del_task_of_an_unknown_id_is_refused() -> None:
    with pytest.raises(TaskNotFoundError):
        workflow_with("a").del_task("zzz")


# --- readiness --------------------------------------------------------------------------------


def test_start_tasks_are_those_without_predecessors() -> None:
    wf = diamond()
    wf.add_task("lone", CodeTask("wf", "lone", "lone"))

    assert ids(wf.get_start_tasks()) == ["a", "lone"]


def test_get_graph_edges_lists_every_edge() -> None:
    assert sorted(diamond().get_graph_edges()) == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]


def test_descendants_are_every_task_reachable_downstream() -> None:
    wf = diamond()

    assert wf.descendants("b") == {"d"}
    assert wf.descendants("a") == {"b", "c", "d"}


# --- per-run copies ---------------------------------------------------------------------------


def test_a_run_copy_is_not_changed_by_later_edits_of_the_definition() -> None:
    definition = workflow_with("a", "b")
    save(definition, "a", user(x=1))
    run = definition.copy_for_run()

    save(definition, "a", user(x=99))
    definition.add_edge("a", "b")

    run_task = run.get_code_task("a")
    assert isinstance(run_task, CodeTask)
    assert [p.value for p in run_task.inputs] == [1]
    assert run.get_graph_edges() == []


# --- saving code tasks ------------------------------------------------------------------------


def test_save_task_with_add_edges_wires_each_referenced_task() -> None:
    wf = workflow_with("a", "b", "c")
    save(wf, "a", user(x=1))
    save(wf, "b", user(x=2))
    save(wf, "c", refs(p="a.y", q="b.y"))

    assert sorted(wf.get_graph_edges()) == [("a", "c"), ("b", "c")]
    c = wf.get_code_task("c")
    assert [str(p.ref) for p in c.references()] == ["a.y", "b.y"]
    assert c.saved and c.code is not None and c.code_id


def test_save_task_refuses_a_reference_to_a_task_not_in_the_workflow() -> None:
    wf = workflow_with("b")

    with pytest.raises(
        InvalidReferenceError, match="refers to task ghost, which is not in workflow"
    ):
        save(wf, "b", refs(x="ghost.y"))
    assert not wf.get_code_task("b").saved


def test_save_task_refuses_a_reference_to_an_undeclared_output_key() -> None:
    wf = workflow_with("a", "b")
    save(wf, "a", user(x=1), out=("y",))

    with pytest.raises(
        InvalidReferenceError, match=r"output 'nope' of task a, which declares \['y'\]"
    ):
        save(wf, "b", refs(x="a.nope"))
    assert wf.get_graph_edges() == []


def test_save_task_without_add_edges_needs_the_edges_already() -> None:
    wf = workflow_with("a", "b")
    save(wf, "a", user(x=1))

    with pytest.raises(InvalidReferenceError, match=r"reads outputs of \['a'\] without an edge"):
        save(wf, "b", refs(x="a.y"), add_edges=False)

    wf.add_edge("a", "b")
    save(wf, "b", refs(x="a.y"), add_edges=False)
    assert wf.get_code_task("b").saved


def test_save_task_that_would_close_a_cycle_changes_nothing() -> None:
    wf = workflow_with("a", "b", "c", "z")
    save(wf, "z", user(x=0))
    save(wf, "a", user(x=1))
    save(wf, "b", refs(x="a.y"))
    save(wf, "c", refs(x="b.y"))

    # z -> a is added first; c -> a then closes a -> b -> c -> a, so z -> a is undone too.
    with pytest.raises(CycleError, match="c -> a -> b -> c"):
        save(wf, "a", refs(p="z.y", q="c.y"))

    assert sorted(wf.get_graph_edges()) == [("a", "b"), ("b", "c")]
    assert [p.schema for p in wf.get_code_task("a").inputs] == [InputSchema.FROM_USER]


def test_save_task_rejects_a_bad_resource_key_by_name_and_keeps_the_old_config() -> None:
    wf = workflow_with("a")
    save(wf, "a", user(x=1), resources={"cpu": 0.5})

    with pytest.raises(InvalidResourceError, match="'gpus'"):
        save(wf, "a", user(x=2), resources={"gpus": 1})

    task = wf.get_code_task("a")
    assert task.requirements.cpu == 0.5
    assert [p.value for p in task.inputs] == [1]


def test_save_task_rejects_code_that_is_not_a_pickle() -> None:
    wf = workflow_with("a")

    with pytest.raises(InvalidCodeError):
        wf.save_task(
            "a",
            CodeTaskConfig(
                task_input=None,
                task_output=None,
                code_str=None,
                serialized_code="bm90IGEgcGlja2xl",  # base64 of "not a pickle"
                resources=None,
            ),
            add_edges=True,
        )
    assert not wf.get_code_task("a").saved


def test_malformed_references_and_duplicate_keys_are_rejected_naming_the_field() -> None:
    with pytest.raises(
        InvalidReferenceError, match=r"input_params\.0\.value must be 'task_id\.output_key'"
    ):
        parse_task_input(refs(x="no-dot"))
    with pytest.raises(LatticeInputError, match="declared twice"):
        parse_task_input(
            {"input_params": {"0": {"key": "x", "value": 1}, "1": {"key": "x", "value": 2}}}
        )
    assert TaskRef.parse("t1.out.with.dots", "f") == TaskRef("t1", "out.with.dots")


def test_batch_config_parsing() -> None:
    assert BatchConfig.parse(None) is None
    assert BatchConfig.parse({"enabled": False, "batch_size": 3}) is None
    assert BatchConfig.parse({"batch_size": 3, "batch_timeout": 0.5}) == BatchConfig(3, 0.5)
    with pytest.raises(LatticeInputError, match="batch_size"):
        BatchConfig.parse({"batch_size": 0})
    with pytest.raises(LatticeInputError, match="batch_timeout"):
        BatchConfig.parse({"batch_size": 2, "batch_timeout": -1})


# --- task types -------------------------------------------------------------------------------


def test_base_task_is_abstract() -> None:
    with pytest.raises(TypeError):
        BaseTask("wf", "t", "name")  # type: ignore[abstract]


def test_task_type_parse_names_the_allowed_values() -> None:
    assert TaskType.parse("code") is TaskType.CODE
    assert TaskType.parse("langgraph") is TaskType.LANGGRAPH
    with pytest.raises(LatticeInputError, match="allowed: code, langgraph"):
        TaskType.parse("shell")


def test_code_task_to_dict() -> None:
    wf = workflow_with("a")
    wf.save_task(
        "a",
        CodeTaskConfig(
            task_input=user(x=1),
            task_output=outputs("y"),
            code_str="src",
            serialized_code=CODE,
            resources={"cpu": 0.5, "cpu_mem": 256},
            batch_config={"batch_size": 4, "batch_timeout": 2},
            priority=1,
        ),
        add_edges=True,
    )

    assert wf.get_task("a").to_dict() == {
        "workflow_id": "wf",
        "task_id": "a",
        "task_name": "name-a",
        "task_type": "code",
        "task_input": user(x=1),
        "task_output": outputs("y"),
        "code_str": "src",
        "resources": {"cpu": 0.5, "cpu_mem": 256, "gpu": 0, "gpu_mem": 0},
        "batch_config": {"enabled": True, "batch_size": 4, "batch_timeout": 2.0},
        "priority": 1,
        "saved": True,
    }


def test_an_unsaved_code_task_to_dict() -> None:
    data = CodeTask("wf", "a", "name").to_dict()

    assert data["saved"] is False
    assert data["task_type"] == "code"
    assert data["resources"] == {"cpu": 1.0, "cpu_mem": 0, "gpu": 0, "gpu_mem": 0}
    assert data["batch_config"] is None


def test_langgraph_task_create_and_to_dict() -> None:
    task = LangGraphTask.create("wf", "g", "node", CODE, {"cpu": 2, "gpu": 1, "gpu_mem": 4000})

    assert task.task_type is TaskType.LANGGRAPH
    assert task.code and task.code_id
    assert task.to_dict() == {
        "workflow_id": "wf",
        "task_id": "g",
        "task_name": "node",
        "task_type": "langgraph",
        "resources": {"cpu": 2.0, "cpu_mem": 0, "gpu": 1, "gpu_mem": 4000},
    }
    with pytest.raises(InvalidCodeError):
        LangGraphTask.create("wf", "g", "node", "%%%", None)
    with pytest.raises(InvalidResourceError, match="'ram'"):
        LangGraphTask.create("wf", "g", "node", CODE, {"ram": 1})


def test_get_code_task_refuses_a_langgraph_task() -> None:
    wf = Workflow("wf")
    wf.add_task("g", LangGraphTask.create("wf", "g", "node", CODE, None))

    with pytest.raises(LatticeInputError, match="is a langgraph task, not a code task"):
        wf.get_code_task("g")
    assert wf.code_tasks() == []


def test_the_code_limit_counts_what_the_workflow_holds_after_saves_deletes_and_rollbacks() -> None:
    one = len(CODE)
    wf = Workflow("wf", max_code_bytes=4 * one)

    def save(task_id: str) -> None:
        wf.save_task(task_id, CodeTaskConfig(serialized_code=CODE), add_edges=False)

    for t in ("a", "b"):
        wf.add_task(t, CodeTask("wf", t, t))
        save(t)
    save("a")  # replaces its own code: still two tasks' worth
    draft = CodeTaskDraft(task_id="c", task_name="c", config=CodeTaskConfig(serialized_code=CODE))
    broken = CodeTaskDraft(
        task_id="d",
        task_name="d",
        config=CodeTaskConfig(serialized_code=CODE, task_input=refs(x="zz.y")),
    )
    with pytest.raises(InvalidReferenceError):
        wf.add_code_tasks([draft, broken])  # rolled back: neither task's code stays counted
    wf.add_code_tasks([draft])
    for t in ("e", "f"):
        wf.add_task(t, CodeTask("wf", t, t))
    save("e")
    with pytest.raises(TooLargeError, match=f"would hold {5 * one} bytes"):
        save("f")
    wf.del_task("b")
    save("f")
    assert sorted(t.task_id for t in wf.tasks()) == ["a", "c", "e", "f"]
