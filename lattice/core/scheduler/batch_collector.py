"""Collects batchable tasks into batches, released by size or by age (spec/000 §3.4).

Pure: time is passed in, so tests need no clock and the scheduler can block on its inbox
until :meth:`next_deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lattice.core.runtime.task import CodeTaskRuntime
from lattice.vocabulary import BatchConfig


@dataclass
class _Group:
    config: BatchConfig
    tasks: list[CodeTaskRuntime]
    opened_at: float

    @property
    def deadline(self) -> float:
        return self.opened_at + self.config.batch_timeout


class BatchCollector:
    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    def add_task(
        self, group_key: str, task: CodeTaskRuntime, config: BatchConfig, now: float
    ) -> None:
        group = self._groups.get(group_key)
        if group is None:
            self._groups[group_key] = _Group(config, [task], now)
        else:
            group.tasks.append(task)

    def get_ready_batches(self, now: float) -> list[list[CodeTaskRuntime]]:
        """Remove and return the batches that are due: every full batch, and a group's
        remainder once its oldest task has waited ``batch_timeout``. What is left of a group
        keeps waiting on a fresh timer."""
        ready: list[list[CodeTaskRuntime]] = []
        for key in list(self._groups):
            group = self._groups[key]
            size = group.config.batch_size
            due = now >= group.deadline
            released = False
            while len(group.tasks) >= size or (due and group.tasks):
                ready.append(group.tasks[:size])
                group.tasks = group.tasks[size:]
                released = True
            if not group.tasks:
                del self._groups[key]
            elif released:
                group.opened_at = now
        return ready

    def next_deadline(self) -> float | None:
        return min((g.deadline for g in self._groups.values()), default=None)

    def remove_run(self, run_id: str) -> list[CodeTaskRuntime]:
        removed: list[CodeTaskRuntime] = []
        for key in list(self._groups):
            group = self._groups[key]
            keep = [t for t in group.tasks if t.run_id != run_id]
            removed.extend(t for t in group.tasks if t.run_id == run_id)
            if keep:
                group.tasks = keep
            else:
                del self._groups[key]
        return removed

    def groups(self) -> list[tuple[list[CodeTaskRuntime], int, float]]:
        """Each open batch: its tasks, the size it waits for, and when it is due."""
        return [(list(g.tasks), g.config.batch_size, g.deadline) for g in self._groups.values()]

    def find(self, run_id: str, task_id: str) -> CodeTaskRuntime | None:
        for group in self._groups.values():
            for task in group.tasks:
                if task.run_id == run_id and task.task_id == task_id:
                    return task
        return None

    def remove_task(self, task: CodeTaskRuntime) -> None:
        for key in list(self._groups):
            group = self._groups[key]
            if task in group.tasks:
                group.tasks.remove(task)
                if not group.tasks:
                    del self._groups[key]
                return

    def pending_count(self) -> int:
        return sum(len(g.tasks) for g in self._groups.values())
