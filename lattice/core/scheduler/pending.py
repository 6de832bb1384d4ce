"""The queue of tasks waiting for a node: priority first, then arrival; pure.

Items are grouped by *shape* (priority, resource request). When the head of a shape does not
fit anywhere, nothing else of that shape will either, so a dispatch pass costs
O(shapes + dispatched) rather than O(queue length): a 10 000-task backlog stays cheap.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from lattice.core.runtime.task import BaseTaskRuntime
from lattice.vocabulary import TaskResourceRequirements

Shape = tuple[int, TaskResourceRequirements]


@dataclass(eq=False)
class PendingItem:
    """One submission to be: a task, or a batch of tasks that run as one call."""

    tasks: list[BaseTaskRuntime]
    requirements: TaskResourceRequirements
    priority: int
    batched: bool = False
    seq: int = field(default=0)
    #: nodes its tasks were lost on: placed elsewhere if any other node can take them (a node
    #: that lost a task is often dying before the cluster says so)
    avoid: frozenset[str] = frozenset()

    @property
    def shape(self) -> Shape:
        return (self.priority, self.requirements)

    @property
    def run_ids(self) -> set[str]:
        return {t.run_id for t in self.tasks}


class PendingQueue:
    def __init__(self) -> None:
        self._shapes: dict[Shape, deque[PendingItem]] = {}
        self._seq = itertools.count()
        self._count = 0

    def push(self, item: PendingItem) -> None:
        item.seq = next(self._seq)
        self._shapes.setdefault(item.shape, deque()).append(item)
        self._count += len(item.tasks)

    def push_front(self, item: PendingItem) -> None:
        """Requeue ahead of its shape (a task whose node died goes first)."""
        self._shapes.setdefault(item.shape, deque()).appendleft(item)
        self._count += len(item.tasks)

    def best(self, blocked: set[Shape]) -> PendingItem | None:
        """The next item to try: lowest priority value, then oldest, among unblocked shapes."""
        heads = [q[0] for shape, q in self._shapes.items() if q and shape not in blocked]
        return min(heads, key=lambda i: (i.priority, i.seq), default=None)

    def pop(self, item: PendingItem) -> None:
        q = self._shapes[item.shape]
        if q and q[0] is item:
            q.popleft()
        else:
            q.remove(item)
        if not q:
            del self._shapes[item.shape]
        self._count -= len(item.tasks)

    def remove_run(self, run_id: str) -> list[BaseTaskRuntime]:
        """Take every task of ``run_id`` out of the queue (batches keep their other tasks)."""
        removed: list[BaseTaskRuntime] = []
        for shape in list(self._shapes):
            keep: deque[PendingItem] = deque()
            for item in self._shapes[shape]:
                mine = [t for t in item.tasks if t.run_id == run_id]
                if mine:
                    removed.extend(mine)
                    item.tasks = [t for t in item.tasks if t.run_id != run_id]
                if item.tasks:
                    keep.append(item)
            if keep:
                self._shapes[shape] = keep
            else:
                del self._shapes[shape]
        self._count -= len(removed)
        return removed

    def __len__(self) -> int:
        """Number of tasks waiting (a batch counts each of its tasks)."""
        return self._count

    def __iter__(self) -> Iterator[PendingItem]:
        items = [i for q in self._shapes.values() for i in q]
        return iter(sorted(items, key=lambda i: (i.priority, i.seq)))
