"""BatchCollector: batches released by size or by age, per group; time is passed in."""

from __future__ import annotations

from dataclasses import replace

import cloudpickle

from lattice.core.runtime.task import CodeTaskRuntime
from lattice.core.scheduler.batch_collector import BatchCollector
from lattice.vocabulary import BatchConfig, TaskResourceRequirements, code_digest
from tests.unit.runtimes import rt


def embed(inputs: list[dict[str, str]]) -> list[dict[str, int]]:
    return [{"n": len(p["text"])} for p in inputs]


CODE = cloudpickle.dumps(embed)


def task(
    task_id: str, *, run_id: str = "r1", name: str = "embed", cpu: float = 1.0
) -> CodeTaskRuntime:
    return replace(
        rt(task_id, run_id, TaskResourceRequirements(cpu=cpu)),
        task_name=name,
        code=CODE,
        code_id=code_digest(CODE),
        batch=BatchConfig(batch_size=3, batch_timeout=1.0),
    )


def add(
    collector: BatchCollector, t: CodeTaskRuntime, now: float, size: int = 3, timeout: float = 1.0
) -> None:
    collector.add_task(t.batch_group, t, BatchConfig(size, timeout), now)


def ids(batches: list[list[CodeTaskRuntime]]) -> list[list[str]]:
    return [[t.task_id for t in batch] for batch in batches]


def test_a_full_batch_is_released_at_once() -> None:
    c = BatchCollector()
    add(c, task("a"), now=0.0)
    add(c, task("b"), now=0.0)
    assert c.get_ready_batches(now=0.0) == []

    add(c, task("c"), now=0.0)

    assert ids(c.get_ready_batches(now=0.0)) == [["a", "b", "c"]]
    assert c.pending_count() == 0
    assert c.next_deadline() is None


def test_a_partial_batch_waits_until_its_oldest_task_is_batch_timeout_old() -> None:
    c = BatchCollector()
    add(c, task("a"), now=10.0)
    add(c, task("b"), now=10.5)

    assert c.next_deadline() == 11.0
    assert c.get_ready_batches(now=10.999) == []
    assert ids(c.get_ready_batches(now=11.0)) == [["a", "b"]]
    assert c.pending_count() == 0


def test_batches_are_grouped_by_task_name() -> None:
    c = BatchCollector()
    for tid in ("a1", "a2"):
        add(c, task(tid, name="summarise"), now=0.0)
    for tid in ("b1", "b2", "b3"):
        add(c, task(tid, name="embed"), now=0.0)

    assert ids(c.get_ready_batches(now=0.0)) == [["b1", "b2", "b3"]]
    assert ids(c.get_ready_batches(now=1.0)) == [["a1", "a2"]]


def test_batch_group_depends_on_name_code_and_request_not_on_run() -> None:
    base = task("x")

    assert task("y", run_id="r2").batch_group == base.batch_group
    assert task("y", name="other").batch_group != base.batch_group
    assert task("y", cpu=2.0).batch_group != base.batch_group


def test_tasks_of_several_runs_share_a_batch() -> None:
    c = BatchCollector()
    add(c, task("a", run_id="r1"), now=0.0)
    add(c, task("a", run_id="r2"), now=0.0)
    add(c, task("b", run_id="r1"), now=0.0)

    (batch,) = c.get_ready_batches(now=0.0)
    assert [(t.run_id, t.task_id) for t in batch] == [("r1", "a"), ("r2", "a"), ("r1", "b")]


def test_an_overfull_group_releases_whole_batches_and_the_rest_waits_on_a_fresh_timer() -> None:
    c = BatchCollector()
    for i in range(7):
        add(c, task(f"t{i}"), now=0.0)

    assert ids(c.get_ready_batches(now=0.2)) == [["t0", "t1", "t2"], ["t3", "t4", "t5"]]
    assert c.pending_count() == 1
    assert c.next_deadline() == 1.2
    assert c.get_ready_batches(now=1.0) == []
    assert ids(c.get_ready_batches(now=1.2)) == [["t6"]]


def test_a_due_group_is_released_in_batches_of_at_most_batch_size() -> None:
    c = BatchCollector()
    for i in range(2):
        add(c, task(f"t{i}"), now=0.0, size=5)
    # Later arrivals join the open group even after its deadline passed.
    for i in range(2, 7):
        add(c, task(f"t{i}"), now=3.0, size=5)

    assert ids(c.get_ready_batches(now=3.0)) == [["t0", "t1", "t2", "t3", "t4"], ["t5", "t6"]]


def test_a_zero_timeout_releases_at_once() -> None:
    c = BatchCollector()
    add(c, task("a"), now=5.0, timeout=0.0)

    assert ids(c.get_ready_batches(now=5.0)) == [["a"]]


def test_next_deadline_is_the_earliest_of_all_groups() -> None:
    c = BatchCollector()
    add(c, task("a", name="slow"), now=0.0, timeout=5.0)
    add(c, task("b", name="fast"), now=1.0, timeout=0.5)

    assert c.next_deadline() == 1.5


def test_remove_run_takes_its_tasks_out_and_keeps_the_others() -> None:
    c = BatchCollector()
    add(c, task("a", run_id="r1"), now=0.0)
    add(c, task("b", run_id="r2"), now=0.0)
    add(c, task("c", run_id="r1", name="other"), now=0.0)

    removed = c.remove_run("r1")

    assert sorted(t.task_id for t in removed) == ["a", "c"]
    assert c.pending_count() == 1
    assert ids(c.get_ready_batches(now=1.0)) == [["b"]]
    assert c.next_deadline() is None
