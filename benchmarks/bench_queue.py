"""What priority bookkeeping costs: ``python -m benchmarks.bench_queue [--runs 100 --tasks 100]``.

A local head with 2 CPU slots gets RUNS runs of TASKS independent no-op tasks of ``cpu 1``
each, all at once, so about RUNS x TASKS tasks wait in the queue. Once with the tasks spread
over the five priority levels (task i of run r at level (r + i) % 5), once with every task at
one level; the two take turns, repetition by repetition. The figure is tasks per second from
the first ``run()`` to the last result; the target is that the spread costs at most 10%.
Every task returns its own index and every output is checked: a wrong result exits 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from lattice import LatticeClient, LatticeWorkflow, task
from lattice.utils.head import LocalHead


@task(inputs=["i"], outputs=["i"], resources={"cpu": 1})
def noop(params: dict[str, int]) -> int:
    return params["i"]


def build(client: LatticeClient, runs: int, tasks: int, spread: bool) -> list[LatticeWorkflow]:
    workflows = []
    for r in range(runs):
        wf = client.create_workflow()
        for i in range(tasks):
            level = (r + i) % 5 if spread else 2
            wf.add_task(noop, inputs={"i": i}, priority=level)
        wf.flush()
        workflows.append(wf)
    return workflows


def measure(client: LatticeClient, runs: int, tasks: int, spread: bool) -> float:
    workflows = build(client, runs, tasks, spread)
    start = time.perf_counter()
    run_ids = [wf.run() for wf in workflows]
    for wf, run_id in zip(workflows, run_ids, strict=True):
        outputs = wf.get_outputs(run_id, timeout=600)
        got = sorted(out["i"] for out in outputs.values())
        if got != list(range(tasks)):
            raise SystemExit(f"wrong results in run {run_id}: {got[:5]}...")
    return runs * tasks / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per run")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    spread: list[float] = []
    flat: list[float] = []
    with LocalHead("local", num_cpus=2) as head, LatticeClient(head.url) as client:
        measure(client, 5, 20, True)  # warm-up
        for _ in range(args.reps):
            spread.append(measure(client, args.runs, args.tasks, True))
            flat.append(measure(client, args.runs, args.tasks, False))
    a, b = statistics.median(spread), statistics.median(flat)
    print(f"{args.runs} runs x {args.tasks} tasks queued at once, 2 slots, local executor")
    print(f"  five levels: {a:.0f} tasks/s   one level: {b:.0f} tasks/s   ratio {a / b:.2f}x")
    print(
        f"  samples five levels: {[round(x) for x in spread]}, one level: {[round(x) for x in flat]}"
    )
    verdict = "PASS" if a >= 0.9 * b else "FAIL"
    print(f"  target: five levels >= 0.9x one level -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
