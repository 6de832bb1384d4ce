"""Head dispatch on a real three-host cluster: ``python -m benchmarks.bench_cluster`` (root).

Starts the cluster of tests/multihost (a head of 1 CPU and two workers of 2 CPUs, each in its
own network namespace), then runs, repetition by repetition, a 10 000-task DAG of light tasks
(source -> 9 898 tasks of cpu 0.05 -> 100 sinks -> 1) through the public client, the same DAG
with plain Ray from a driver on the head's host (``num_cpus=0.05``; benchmarks/cluster_ray_driver.py),
and once the mixed DAG of the test (GPU, two-CPU and one-CPU tasks among the light ones). For
each Lattice run: tasks per second from ``run()`` to the last result, and the CPU the head's
server process (API, scheduler, executor) and its Ray GCS spent per task. Results, every
sample, go to ``benchmarks/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import machine
from benchmarks.workloads import check

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.json"
#: the head dispatches light tasks at least this fast (the issue's target)
TARGET_TASKS_PER_S = 2000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    args = parser.parse_args(argv)
    from tests.multihost import netns

    reason = netns.unavailable()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    from tests.integration.test_distributed import finished
    from tests.multihost.cluster import RAY_PORT, build_dag, measure, three_hosts

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with three_hosts() as cluster:
        client = cluster.api()
        measure(cluster, build_dag(client, leaves=2000, mixed=False))  # warm-up: task hosts
        for _ in range(args.reps):
            dag = build_dag(client, mixed=False)
            got = measure(cluster, dag)
            results = finished(got.pop("messages"))
            check(results[dag.final.task_id] == {"s": dag.expected_total}, "cluster DAG")
            runs.append(got)
            print(f"lattice: {got['tasks_per_s']:.0f} tasks/s", flush=True)
        ray_address = f"{cluster.head_host.address}:{RAY_PORT}"
        command = [sys.executable, "-m", "benchmarks.cluster_ray_driver", ray_address]
        driver = subprocess.run(
            [*cluster.head_host.wrap, *command, str(args.reps)],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if driver.returncode != 0:
            raise RuntimeError(f"the plain Ray driver failed:\n{driver.stderr[-3000:]}")
        ray_seconds = json.loads(driver.stdout.strip().splitlines()[-1])
        mixed_dag = build_dag(client, mixed=True)
        mixed = measure(cluster, mixed_dag)
        results = finished(mixed.pop("messages"))
        check(results[mixed_dag.final.task_id] == {"s": mixed_dag.expected_total}, "mixed DAG")
    rate = statistics.median(r["tasks_per_s"] for r in runs)
    ray_rate = 10_000 / statistics.median(ray_seconds)
    doc = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "light_dag": runs,
        "plain_ray_light_dag_s": ray_seconds,
        "mixed_dag": mixed,
        "median_tasks_per_s": rate,
        "plain_ray_tasks_per_s": ray_rate,
        "ratio": rate / ray_rate,
        "median_server_cpu_ms_per_task": statistics.median(
            r["server_cpu_ms_per_task"] for r in runs
        ),
        "target_tasks_per_s": TARGET_TASKS_PER_S,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"light DAG: {rate:.0f} tasks/s (plain Ray {ray_rate:.0f}, {rate / ray_rate:.2f}x); "
        f"head server CPU {doc['median_server_cpu_ms_per_task']:.3f} ms/task; mixed DAG "
        f"{mixed['tasks_per_s']:.0f} tasks/s\nwritten to {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
