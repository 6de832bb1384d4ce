"""TaskSubmissions built by hand, for tests that drive an executor directly (no scheduler).

One key counter for the session: the executor tests share one Ray executor, so every key they
submit under is unique across modules.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import cloudpickle

from lattice.core.resource.node import SelectedNode
from lattice.executor.base import ExecutorBackend, TaskKind, TaskOutcome, TaskSubmission
from lattice.vocabulary import TaskResourceRequirements

LOCAL = SelectedNode("local", "127.0.0.1")
TIMEOUT = 60.0
_keys = itertools.count()


def make_submission(
    fn: Callable[..., Any],
    *,
    kind: TaskKind = TaskKind.CODE,
    outputs: tuple[str, ...] = ("out",),
    user_inputs: Any = None,
    upstream_inputs: Any = None,
    cpu: float = 0.5,
    node: SelectedNode = LOCAL,
    args: bytes = b"",
    kwargs: bytes = b"",
) -> TaskSubmission:
    """A submission running ``fn`` (pickled by value if its module is registered so)."""
    return TaskSubmission(
        task_key=f"t{next(_keys)}",
        task_name=fn.__name__,
        kind=kind,
        code=cloudpickle.dumps(fn),
        requirements=TaskResourceRequirements(cpu=cpu),
        node=node,
        outputs=outputs,
        user_inputs=user_inputs,
        upstream_inputs=upstream_inputs,
        args=args,
        kwargs=kwargs,
    )


def run(executor: ExecutorBackend, submission: TaskSubmission) -> TaskOutcome:
    return executor.submit(submission).result(TIMEOUT)
