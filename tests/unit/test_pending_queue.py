"""PendingQueue: priority first, then arrival; blocked shapes are skipped; runs removed."""

from __future__ import annotations

from lattice.core.scheduler.pending import PendingItem, PendingQueue
from lattice.vocabulary import TaskResourceRequirements
from tests.unit.runtimes import rt

SMALL = TaskResourceRequirements(cpu=1)
LARGE = TaskResourceRequirements(cpu=8)


def item(
    *task_ids: str, req: TaskResourceRequirements = SMALL, priority: int = 2, run_id: str = "r1"
) -> PendingItem:
    return PendingItem([rt(t, run_id) for t in task_ids], req, priority, batched=len(task_ids) > 1)


def names(i: PendingItem | None) -> list[str]:
    assert i is not None
    return [t.task_id for t in i.tasks]


def drain(q: PendingQueue) -> list[list[str]]:
    out = []
    while (best := q.best(set())) is not None:
        q.pop(best)
        out.append(names(best))
    return out


def test_lower_priority_value_goes_first_then_arrival_order() -> None:
    q = PendingQueue()
    q.push(item("normal-1"))
    q.push(item("idle", priority=4))
    q.push(item("critical", priority=0, req=LARGE))
    q.push(item("normal-2", req=LARGE))

    assert drain(q) == [["critical"], ["normal-1"], ["normal-2"], ["idle"]]
    assert len(q) == 0


def test_a_blocked_shape_is_skipped_and_others_go_ahead() -> None:
    q = PendingQueue()
    big = item("big", req=LARGE)
    q.push(big)
    q.push(item("small"))

    assert q.best(set()) is big
    assert names(q.best({big.shape})) == ["small"]
    assert q.best({big.shape, item("x").shape}) is None


def test_the_same_resources_at_another_priority_is_another_shape() -> None:
    assert item("a", priority=1).shape != item("a", priority=2).shape
    assert item("a").shape == item("b").shape


def test_len_counts_every_task_of_a_batch() -> None:
    q = PendingQueue()
    q.push(item("a", "b", "c"))
    q.push(item("d"))

    assert len(q) == 4
    q.pop(q.best(set()))  # type: ignore[arg-type]
    assert len(q) == 1


def test_push_front_goes_ahead_of_its_shape() -> None:
    q = PendingQueue()
    q.push(item("first"))
    q.push(item("second"))
    requeued = item("lost")

    q.push_front(requeued)

    assert q.best(set()) is requeued
    assert drain(q) == [["lost"], ["first"], ["second"]]


def test_pop_removes_an_item_that_is_not_at_the_head() -> None:
    q = PendingQueue()
    q.push(item("a"))
    middle = item("b")
    q.push(middle)
    q.push(item("c"))

    q.pop(middle)

    assert [names(i) for i in q] == [["a"], ["c"]]
    assert len(q) == 2


def test_remove_run_takes_its_tasks_and_batches_keep_the_other_runs_tasks() -> None:
    q = PendingQueue()
    q.push(item("a", run_id="r1"))
    mixed = PendingItem([rt("b", "r1"), rt("c", "r2")], SMALL, 2, batched=True)
    q.push(mixed)
    q.push(item("d", run_id="r2", req=LARGE))

    removed = q.remove_run("r1")

    assert sorted(t.task_id for t in removed) == ["a", "b"]
    assert len(q) == 2
    assert [names(i) for i in q] == [["c"], ["d"]]
    assert mixed.run_ids == {"r2"}
    assert q.remove_run("r1") == []


def test_iteration_is_in_dispatch_order() -> None:
    q = PendingQueue()
    q.push(item("low", priority=3))
    q.push(item("high", priority=1, req=LARGE))
    q.push(item("normal"))

    assert [names(i) for i in q] == [["high"], ["normal"], ["low"]]


# --- aging and fairness ---------------------------------------------------------------------


def test_a_waiting_task_rises_one_level_per_aging_interval() -> None:
    q = PendingQueue(aging=10.0)
    idle = item("idle", priority=4)
    idle.since = 0.0
    q.push(idle)

    assert [q.effective_priority(idle, t) for t in (0, 9.9, 10, 25, 40, 1000)] == [4, 4, 3, 2, 0, 0]


def test_an_idle_task_overtakes_a_steady_stream_of_normal_work_after_two_intervals() -> None:
    q = PendingQueue(aging=10.0)
    idle = item("idle", priority=4)
    q.push(idle)  # since 0
    started: list[tuple[float, str]] = []
    for step in range(30):  # one NORMAL task arrives and one task starts every second
        now = float(step)
        fresh = item(f"n{step}")
        fresh.since = now
        q.push(fresh)
        best = q.best(set(), now)
        assert best is not None
        q.pop(best)
        started.append((now, names(best)[0]))

    (when,) = [t for t, name in started if name == "idle"]
    assert when == 20.0  # 2 x aging: normal by then, and older than every normal task


def test_without_aging_idle_work_waits_for_all_normal_work() -> None:
    q = PendingQueue()
    idle = item("idle", priority=4)
    q.push(idle)
    q.push(item("n"))
    assert names(q.best(set(), 1e9)) == ["n"]


def test_runs_of_one_priority_take_turns() -> None:
    q = PendingQueue()
    for i in range(5):
        q.push(item(f"big{i}", run_id="big"))
    for i in range(2):
        q.push(item(f"small{i}", run_id="small"))

    assert [n[0] for n in drain(q)] == ["big0", "small0", "big1", "small1", "big2", "big3", "big4"]


def test_a_requeued_task_goes_first_and_removing_a_run_keeps_the_others_turns() -> None:
    q = PendingQueue()
    for run in ("a", "b", "c"):
        q.push(item(f"{run}1", run_id=run))
        q.push(item(f"{run}2", run_id=run))
    lost = item("b0", run_id="b")
    q.push_front(lost)

    assert names(q.best(set())) == ["b0"]
    assert [t.task_id for t in q.remove_run("b")] == ["b0", "b1", "b2"]
    assert [n[0] for n in drain(q)] == ["a1", "c1", "a2", "c2"]
    assert len(q) == 0
