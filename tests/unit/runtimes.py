"""Task runtimes for the scheduler's unit tests."""

from __future__ import annotations

from lattice.core.runtime.task import CodeTaskRuntime
from lattice.vocabulary import TaskResourceRequirements

#: what every task made by :func:`rt` asks for unless told otherwise
ONE_CPU = TaskResourceRequirements(cpu=1)


def rt(
    task_id: str, run_id: str = "r1", requirements: TaskResourceRequirements = ONE_CPU
) -> CodeTaskRuntime:
    """A code task's runtime in run ``run_id``, named after its id."""
    return CodeTaskRuntime(
        run_id=run_id,
        workflow_id="wf",
        task_id=task_id,
        task_name=task_id,
        code=b"",
        code_id="c",
        requirements=requirements,
    )
