"""What the scheduler core decides, for the scheduler thread to carry out.

The core (:mod:`lattice.core.scheduler.core`) turns each message into a list of these; it never
calls the executor, the message bus or the metrics itself. The thread performs them in order,
and tells the core how a submission went (:class:`~lattice.core.scheduler.messages.SubmittedData`,
:class:`~lattice.core.scheduler.messages.SubmitRefusedData`) before it performs anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from lattice.core.run.events import RunEvent
from lattice.executor.base import TaskSubmission


@dataclass(frozen=True)
class AwaitOutput:
    """An input of a submission that a still-running submission will produce: output ``key``
    of submission ``submission_key``. The thread replaces it with the executor's
    :class:`~lattice.executor.base.PendingOutput` for that submission's handle."""

    submission_key: str
    key: str


@dataclass(frozen=True)
class Submit:
    """Hand ``submission`` to the executor (its inputs may hold :class:`AwaitOutput`)."""

    submission: TaskSubmission

    @property
    def key(self) -> str:
        return self.submission.task_key


@dataclass(frozen=True)
class Cancel:
    """Ask the executor to stop submission ``key``; its report still comes (and is ignored
    or reported cancelled, as the core decides then)."""

    key: str


@dataclass(frozen=True)
class Emit:
    """Record ``event`` in its run's log (and count it in the metrics)."""

    event: RunEvent


@dataclass(frozen=True)
class ReleaseNode:
    """A disconnected node runs nothing of Lattice's any more: the executor lets go of it."""

    node_id: str


@dataclass(frozen=True)
class Stop:
    """The scheduler thread ends after this wake-up."""


Command = Submit | Cancel | Emit | ReleaseNode | Stop
