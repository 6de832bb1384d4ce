"""The queue of tasks waiting for a node: priority with aging, fair between runs; pure.

Which queued item goes next:

1. **Priority** (spec/004: 0 critical .. 4 idle), lowest value first, *with aging*: an item
   rises one level for every ``aging`` seconds it has waited (never above critical), so work
   of a low priority never starves behind a steady stream of higher work. An idle task waits
   at most about ``2 * aging`` before it competes as normal work (and then goes first, being
   the oldest). ``aging=None`` turns aging off.
2. **Fairness between runs**: among items of one priority and resource request, runs take
   turns (round robin), so one run with 10 000 queued tasks does not hold back a run with 3.
3. **Arrival** otherwise.

Items are grouped by *shape* (priority, resource request). When the head of a shape does not
fit anywhere, nothing else of that shape will either, so a dispatch pass costs
O(shapes + dispatched) rather than O(queue length): a 10 000-task backlog stays cheap.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
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
    #: when it entered the queue, on the scheduler's clock (aging counts from here)
    since: float = 0.0

    @property
    def shape(self) -> Shape:
        return (self.priority, self.requirements)

    @property
    def run_ids(self) -> set[str]:
        return {t.run_id for t in self.tasks}

    @property
    def turn_key(self) -> str:
        """Whose turn it takes in round robin: its (first) run."""
        return self.tasks[0].run_id


class _ShapeQueue:
    """The items of one shape, one deque per run, the runs in round-robin order."""

    def __init__(self) -> None:
        self.runs: OrderedDict[str, deque[PendingItem]] = OrderedDict()

    def head(self) -> PendingItem | None:
        for items in self.runs.values():
            return items[0]
        return None

    def append(self, item: PendingItem) -> None:
        self.runs.setdefault(item.turn_key, deque()).append(item)

    def appendleft(self, item: PendingItem) -> None:
        key = item.turn_key
        self.runs.setdefault(key, deque()).appendleft(item)
        self.runs.move_to_end(key, last=False)

    def remove(self, item: PendingItem) -> None:
        key = item.turn_key
        items = self.runs[key]
        was_head = next(iter(self.runs)) == key and items[0] is item
        if items[0] is item:
            items.popleft()
        else:
            items.remove(item)
        if not items:
            del self.runs[key]
        elif was_head:
            self.runs.move_to_end(key)  # the next run's turn

    def __bool__(self) -> bool:
        return bool(self.runs)

    def __iter__(self) -> Iterator[PendingItem]:
        for items in self.runs.values():
            yield from items


class PendingQueue:
    def __init__(self, aging: float | None = None) -> None:
        """``aging``: seconds of waiting per priority level gained (None or 0: no aging)."""
        self._aging = aging or None
        self._shapes: dict[Shape, _ShapeQueue] = {}
        self._seq = itertools.count()
        self._count = 0

    def effective_priority(self, item: PendingItem, now: float) -> int:
        """``item``'s priority after aging: one level higher per ``aging`` seconds waited."""
        if self._aging is None:
            return item.priority
        return max(0, item.priority - int((now - item.since) // self._aging))

    def push(self, item: PendingItem) -> None:
        item.seq = next(self._seq)
        self._shapes.setdefault(item.shape, _ShapeQueue()).append(item)
        self._count += len(item.tasks)

    def push_front(self, item: PendingItem) -> None:
        """Requeue ahead of its shape (a task whose node died goes first)."""
        self._shapes.setdefault(item.shape, _ShapeQueue()).appendleft(item)
        self._count += len(item.tasks)

    def best(self, blocked: set[Shape], now: float = 0.0) -> PendingItem | None:
        """The next item to try among unblocked shapes: lowest effective priority, then
        oldest (each shape offers the item of the run whose turn it is)."""
        heads = [
            head
            for shape, queue in self._shapes.items()
            if shape not in blocked and (head := queue.head()) is not None
        ]
        return min(heads, key=lambda i: (self.effective_priority(i, now), i.seq), default=None)

    def pop(self, item: PendingItem) -> None:
        queue = self._shapes[item.shape]
        queue.remove(item)
        if not queue:
            del self._shapes[item.shape]
        self._count -= len(item.tasks)

    def __contains__(self, item: PendingItem) -> bool:
        queue = self._shapes.get(item.shape)
        return queue is not None and any(i is item for i in queue)

    def remove_run(self, run_id: str) -> list[BaseTaskRuntime]:
        """Take every task of ``run_id`` out of the queue (batches keep their other tasks)."""
        removed: list[BaseTaskRuntime] = []
        for shape in list(self._shapes):
            old = self._shapes[shape]
            fresh = _ShapeQueue()
            for item in old:
                mine = [t for t in item.tasks if t.run_id == run_id]
                if mine:
                    removed.extend(mine)
                    item.tasks = [t for t in item.tasks if t.run_id != run_id]
                if item.tasks:
                    fresh.append(item)
            if fresh:
                self._shapes[shape] = fresh
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
