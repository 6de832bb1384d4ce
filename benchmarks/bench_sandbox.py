"""Per-task overhead of each sandbox level: ``python -m benchmarks.bench_sandbox [-n N]``.

Runs N no-op tasks per level through :class:`SandboxRunner`, one after another, and prints
the mean and median time per task next to in-process :func:`execute`. The first task of a
level, which starts the fork server (or pulls an image), is timed separately as "first".
Levels this machine cannot run are listed with the reason.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from lattice.core.resource.node import SelectedNode
from lattice.executor.base import TaskKind, TaskOutcome, TaskSubmission
from lattice.executor.runner import execute
from lattice.executor.sandbox.runner import SandboxRunner
from lattice.vocabulary import SandboxLevel, SandboxSpec, TaskResourceRequirements


def noop(params: dict[str, Any]) -> None:
    return None


def _submission() -> TaskSubmission:
    return TaskSubmission(
        task_key="bench",
        task_name="noop",
        kind=TaskKind.CODE,
        code=cloudpickle.dumps(noop),
        requirements=TaskResourceRequirements(),
        node=SelectedNode("local", "127.0.0.1"),
        outputs=("out",),
        user_inputs={},
        upstream_inputs={},
    )


def _time(
    run: Callable[[TaskSubmission], TaskOutcome], sub: TaskSubmission, n: int
) -> tuple[float, list[float]]:
    start = time.perf_counter()
    first = run(sub)
    first_s = time.perf_counter() - start
    if not first.ok:
        raise RuntimeError(f"the no-op task failed: {first.error}")
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        run(sub)
        samples.append(time.perf_counter() - start)
    return first_s, samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=50, help="tasks per level (default 50)")
    args = parser.parse_args(argv)
    sub = _submission()
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    first, samples = _time(lambda s: execute(s, set_gpu_env=False), sub, args.n)
    baseline = statistics.median(samples)
    rows.append(
        (
            "in-process",
            f"{first * 1e3:.2f}",
            f"{statistics.mean(samples) * 1e3:.2f}",
            f"{baseline * 1e3:.2f}",
        )
    )
    for level in (SandboxLevel.SUBPROCESS, SandboxLevel.SECCOMP, SandboxLevel.DOCKER):
        reason = SandboxRunner.unavailable(level)
        if reason is not None:
            rows.append((level.value, "-", "-", "-"))
            notes.append(f"{level.value}: unavailable here: {reason}")
            continue
        runner = SandboxRunner(SandboxSpec(level=level))
        try:
            first, samples = _time(runner.run, sub, args.n)
        finally:
            runner.close()
        rows.append(
            (
                level.value,
                f"{first * 1e3:.1f}",
                f"{statistics.mean(samples) * 1e3:.1f}",
                f"{statistics.median(samples) * 1e3:.1f}",
            )
        )
    header = ("level", "first ms", "mean ms", "median ms")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(f"{args.n} no-op tasks per level, one at a time")
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
