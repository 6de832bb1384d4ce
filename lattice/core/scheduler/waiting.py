"""Tasks of a run that wait for their upstream tasks to finish; pure.

A run hands the scheduler all of its tasks when it starts, each with the ids of the tasks it
depends on. The scheduler releases a task the moment its last upstream task finishes, in the
same wake-up that records that result: the step from one task to the next never waits for the
event loop (which records the run's log and streams it to clients meanwhile).

When a task fails or is cancelled its descendants never run: :meth:`WaitingTasks.drop_after`
forgets them (the run itself reports them skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lattice.core.runtime.task import BaseTaskRuntime


@dataclass(eq=False)
class _Waiting:
    task: BaseTaskRuntime
    #: upstream task ids that have not finished yet
    remaining: set[str]


@dataclass(eq=False)
class _Run:
    waiting: dict[str, _Waiting] = field(default_factory=dict)
    #: task id -> ids of the waiting tasks that depend on it
    dependants: dict[str, list[str]] = field(default_factory=dict)


class WaitingTasks:
    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def add(self, task: BaseTaskRuntime, after: Iterable[str]) -> None:
        """Hold ``task`` until every task in ``after`` (non-empty) has finished."""
        remaining = set(after)
        if not remaining:
            raise ValueError(f"task {task.task_id} waits for nothing; it is ready now")
        run = self._runs.setdefault(task.run_id, _Run())
        if task.task_id in run.waiting:
            raise ValueError(f"task {task.task_id} of run {task.run_id} is already waiting")
        run.waiting[task.task_id] = _Waiting(task, remaining)
        for upstream in remaining:
            run.dependants.setdefault(upstream, []).append(task.task_id)

    def finished(self, run_id: str, task_id: str) -> list[BaseTaskRuntime]:
        """``task_id`` finished: the tasks that now have all their inputs, in the order they
        were added."""
        run = self._runs.get(run_id)
        if run is None:
            return []
        ready = []
        for dep_id in run.dependants.pop(task_id, ()):
            waiting = run.waiting.get(dep_id)
            if waiting is None:
                continue  # dropped: another of its upstream tasks failed
            waiting.remaining.discard(task_id)
            if not waiting.remaining:
                self._forget(run_id, run, dep_id)
                ready.append(waiting.task)
        return ready

    def take_follower(
        self, run_id: str, task_id: str, accept: Callable[[BaseTaskRuntime], bool]
    ) -> BaseTaskRuntime | None:
        """Take out the first waiting task that ``accept`` takes and that waits for
        ``task_id`` alone (it would be released when ``task_id`` finishes); None if none.
        What waits for the task taken out keeps waiting for it."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        for dep_id in run.dependants.get(task_id, ()):
            waiting = run.waiting.get(dep_id)
            if waiting is not None and waiting.remaining == {task_id} and accept(waiting.task):
                run.dependants[task_id].remove(dep_id)
                self._forget(run_id, run, dep_id)
                return waiting.task
        return None

    def drop_after(self, run_id: str, task_id: str) -> None:
        """``task_id`` will never finish: forget every waiting task that depends on it,
        directly or not."""
        run = self._runs.get(run_id)
        stack = [task_id]
        while run is not None and stack:
            for dep_id in run.dependants.pop(stack.pop(), ()):
                if dep_id in run.waiting:
                    self._forget(run_id, run, dep_id)
                    stack.append(dep_id)

    def remove(self, run_id: str, task_id: str) -> BaseTaskRuntime | None:
        """Take ``task_id`` out (it will not run); what waits for it still does. None if it
        was not waiting."""
        run = self._runs.get(run_id)
        waiting = run.waiting.get(task_id) if run else None
        if run is None or waiting is None:
            return None
        self._forget(run_id, run, task_id)
        return waiting.task

    def find(self, run_id: str, task_id: str) -> BaseTaskRuntime | None:
        run = self._runs.get(run_id)
        waiting = run.waiting.get(task_id) if run else None
        return None if waiting is None else waiting.task

    def drop_run(self, run_id: str) -> None:
        """Forget every waiting task of ``run_id`` (cancelled or over)."""
        self._runs.pop(run_id, None)

    def _forget(self, run_id: str, run: _Run, task_id: str) -> None:
        del run.waiting[task_id]
        if not run.waiting:
            # Nothing of the run waits any more: what is left are lists of dropped tasks.
            del self._runs[run_id]

    def entries(self) -> list[tuple[BaseTaskRuntime, frozenset[str]]]:
        """Every waiting task with the upstream task ids it still waits for."""
        return [
            (w.task, frozenset(w.remaining))
            for run in self._runs.values()
            for w in run.waiting.values()
        ]

    def __len__(self) -> int:
        return sum(len(run.waiting) for run in self._runs.values())
