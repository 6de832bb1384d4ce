"""Runs a submission in an isolated child (subprocess / seccomp / docker)."""

from __future__ import annotations

from lattice.executor.base import TaskOutcome, TaskSubmission
from lattice.executor.sandbox.policy import SandboxLevel, SandboxSpec


class SandboxRunner:
    """Isolates tasks according to a server-wide default and each task's own request.

    Interface used by the executors (implementation in progress in the sandbox issue).
    """

    def __init__(self, default: SandboxSpec) -> None:
        self.default = default

    def effective_spec(self, submission: TaskSubmission) -> SandboxSpec:
        return submission.sandbox or self.default

    def applies(self, submission: TaskSubmission) -> bool:
        return self.effective_spec(submission).level is not SandboxLevel.NONE

    def run(self, submission: TaskSubmission) -> TaskOutcome:
        raise NotImplementedError

    def cancel(self, task_key: str) -> bool:
        return False
