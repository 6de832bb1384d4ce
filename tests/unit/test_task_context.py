"""The TaskContext a two-parameter task function gets, and the directives it carries back."""

from __future__ import annotations

from typing import Any

import cloudpickle
import pytest

from lattice import LatticeUsageError, TaskContext
from lattice.context import TaskDirectives, takes_context
from lattice.core.resource.node import SelectedNode
from lattice.executor.base import TaskKind, TaskSubmission
from lattice.executor.runner import execute
from lattice.executor.sandbox.wire import decode_outcome, encode_outcome
from lattice.vocabulary import TaskAttempt, TaskResourceRequirements

ATTEMPT = TaskAttempt(run_id="r1", task_id="t1", attempt=2)


def submission(fn: Any) -> TaskSubmission:
    return TaskSubmission(
        task_key="k",
        task_name="router",
        kind=TaskKind.CODE,
        code=cloudpickle.dumps(fn),
        requirements=TaskResourceRequirements(),
        node=SelectedNode("local", "127.0.0.1"),
        outputs=("out",),
        user_inputs={"x": 1},
        upstream_inputs={},
        attempt=ATTEMPT,
    )


def test_which_functions_take_a_context() -> None:
    def one(params: Any) -> None: ...
    def two(params: Any, ctx: Any) -> None: ...
    def star(*args: Any) -> None: ...
    def keyword_only(params: Any, *, ctx: Any = None) -> None: ...

    assert [takes_context(f) for f in (one, two, star, keyword_only)] == [
        False,
        True,
        True,
        False,
    ]
    assert takes_context(len) is False  # a builtin with one positional parameter


def test_a_two_parameter_task_gets_its_attempt_and_its_routing_comes_back() -> None:
    def router(params: dict[str, int], ctx: TaskContext) -> int:
        assert (ctx.run_id, ctx.task_id, ctx.attempt.attempt) == ("r1", "t1", 2)
        assert ctx.idempotency_key == "r1/t1"
        ctx.goto("left")
        ctx.goto("right", "left")
        return params["x"] + 1

    outcome = execute(submission(router), set_gpu_env=False)
    assert outcome.error is None, outcome.error
    assert outcome.value == {"out": 2}
    assert outcome.directives == TaskDirectives(goto=("left", "right"), end=False)


def test_a_one_parameter_task_carries_no_directives() -> None:
    outcome = execute(submission(lambda params: params["x"]), set_gpu_env=False)
    assert (outcome.value, outcome.directives) == ({"out": 1}, None)


def test_a_task_that_fails_after_routing_carries_only_its_error() -> None:
    def router(params: Any, ctx: TaskContext) -> None:
        ctx.end()
        raise RuntimeError("boom")

    outcome = execute(submission(router), set_gpu_env=False)
    assert outcome.error is not None and outcome.error.type == "RuntimeError"
    assert outcome.directives is None


def test_goto_without_a_name_is_a_usage_error() -> None:
    ctx = TaskContext(ATTEMPT, "router")
    with pytest.raises(LatticeUsageError, match="at least one"):
        ctx.goto()
    with pytest.raises(LatticeUsageError, match="task names"):
        ctx.goto("")
    assert ctx.directives().empty


def test_a_batch_context_has_no_attempt() -> None:
    with pytest.raises(LatticeUsageError, match="batch"):
        _ = TaskContext(None, "b").attempt


def test_directives_cross_the_sandbox_wire_and_malformed_ones_are_refused() -> None:
    outcome = execute(submission(lambda p, ctx: ctx.end() or 5), set_gpu_env=False)
    back = decode_outcome(encode_outcome(outcome), open_values=True)
    assert back.value == {"out": 5}
    assert back.directives == TaskDirectives(goto=None, end=True)
    for bad in ({"goto": "a"}, {"goto": [1]}, {"end": "yes"}, ["end"]):
        with pytest.raises(ValueError, match="directives"):
            TaskDirectives.from_dict(bad)
