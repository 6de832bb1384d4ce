"""Read-only views of runs for people: the runs list and a run's detail (the dashboard, the
CLI). Built from the run's log (its fold and its logged events), never kept a second time.

Times are wall-clock seconds since the epoch taken when the head's log took each event; a run
read back from the store after a restart has no times for the events logged before it (those
fields are ``null``). ``duration`` of a task is how long its own code ran, as its node reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lattice.core.run.events import (
    RunFinished,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
)
from lattice.core.run.log import RunLog

_ENDING = (TaskFinished, TaskFailed, TaskSkipped, TaskCancelled)


def run_row(log: RunLog) -> dict[str, Any]:
    """One line of ``GET /runs``: status, times and task counts."""
    finished_at = None
    events = log.events()
    if log.closed and events and isinstance(events[-1].event, RunFinished):
        finished_at = events[-1].at
    counts = dict(log.state.counts())
    return {
        "run_id": log.run_id,
        "workflow_id": log.workflow_id,
        "status": log.status.value,
        "created_at": log.created_at,
        "finished_at": finished_at,
        "duration": None if finished_at is None else max(0.0, finished_at - log.created_at),
        "task_count": len(log.state.tasks),
        "counts": counts,
    }


def task_timings(log: RunLog) -> dict[str, dict[str, Any]]:
    """Per task: its attempts (start time, node) and when and how it ended."""
    out: dict[str, dict[str, Any]] = {}
    for logged in log.events():
        event = logged.event
        if not isinstance(event, TaskEvent):
            continue
        entry = out.setdefault(event.task_id, {"attempts": [], "ended_at": None, "duration": None})
        if isinstance(event, TaskStarted):
            entry["attempts"].append(
                {"attempt": event.attempt, "node_id": event.node_id, "started_at": logged.at}
            )
        elif isinstance(event, _ENDING):
            entry["ended_at"] = logged.at
            if isinstance(event, TaskFinished | TaskFailed):
                entry["duration"] = event.duration
    return out


def run_detail(log: RunLog, edges: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``GET /runs/{id}``: the summary of spec'd fields plus, as additions, the run's times,
    its edges, and each task's name, attempts and times."""
    detail = log.summary()
    row = run_row(log)
    detail.update(
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        duration=row["duration"],
        counts=row["counts"],
        edges=[[a, b] for a, b in edges],
    )
    timings = task_timings(log)
    for task_id, view in detail["tasks"].items():
        state = log.state.tasks[task_id]
        timing = timings.get(task_id, {"attempts": [], "ended_at": None, "duration": None})
        attempts = timing["attempts"]
        view.update(
            task_name=state.task_name,
            attempt=state.attempt,
            attempts=attempts,
            started_at=attempts[-1]["started_at"] if attempts else None,
            ended_at=timing["ended_at"],
            duration=timing["duration"],
        )
    return detail
