"""Plain Ray on the three-host cluster: the baseline of benchmarks/bench_cluster.py.

Run on the head's host (``ip netns exec NS python -m benchmarks.cluster_ray_driver ADDRESS``),
it joins the cluster's Ray as a driver of its own and runs the same shape as the Lattice DAG:
a source, LEAVES no-op tasks of ``num_cpus=0.05`` that take the source's ref, sinks of GROUP
leaves, one final sink; it prints the seconds of each repetition as JSON, after checking the
sum.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import ray

from lattice.executor.ray.node import align_auth_mode

LEAVES, GROUP, CPU = 9_898, 99, 0.05


def main(address: str, reps: int) -> int:
    align_auth_mode()  # the cluster's token mode, as Lattice's own drivers do
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)

    @ray.remote(num_cpus=0.1)
    def source(x: int) -> int:
        return x

    @ray.remote(num_cpus=CPU)
    def leaf(x: int, i: int) -> int:
        return x + i

    @ray.remote(num_cpus=0.1)
    def total(*parts: Any) -> int:
        return sum(parts)

    def once() -> float:
        start = time.perf_counter()
        src = source.remote(3)
        leaves = [leaf.remote(src, i) for i in range(LEAVES)]
        sinks = [total.remote(*leaves[k : k + GROUP]) for k in range(0, LEAVES, GROUP)]
        got = ray.get(total.remote(*sinks))
        seconds = time.perf_counter() - start
        if got != sum(3 + i for i in range(LEAVES)):
            raise AssertionError(f"wrong result in the plain Ray cluster DAG: {got}")
        return seconds

    once()  # warm-up: workers start on every node
    print(json.dumps([once() for _ in range(reps)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3))
