"""The same workloads written directly against Ray: the baselines.

:class:`PlainRay` starts a private Ray (``ray.init(address="local", num_cpus=2)``) in the
benchmark process. It is a cluster of its own, separate from the one the Lattice head runs in
its process; both share the machine's cores, so the suite never runs the two at the same time.
Each method runs one repetition, checks what it computed and returns seconds. Every remote
function asks for what the Lattice side of the same row asks for: ``num_cpus=1`` (Ray's
default) against Lattice's default ``cpu 1``, ``num_cpus=0.1`` against ``cpu 0.1``, and so on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks import workloads as w


class PlainRay:
    def __init__(self, num_cpus: int = 2) -> None:
        import ray

        self._ray = ray
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
        self._define()

    def _define(self) -> None:
        ray = self._ray

        def noop(x: Any) -> Any:
            return x

        def count(*parts: Any) -> int:
            return len(parts)

        def join(*parts: Any) -> list[Any]:
            return list(parts)

        def wait(seconds: float, tag: str) -> str:
            time.sleep(seconds)
            return tag

        def make_array(seed: int) -> Any:
            import numpy as np

            return np.full(w.ARRAY_ITEMS, float(seed))

        def array_sum(array: Any) -> float:
            return float(array.sum())

        def burn(rounds: int, seed: int) -> int:
            return w.burn(rounds, seed)

        #: by CPU request: the no-op and the fan-out's sink
        self.noop = {1.0: ray.remote(noop), 0.1: ray.remote(num_cpus=0.1)(noop)}
        self.count = {1.0: ray.remote(count), 0.1: ray.remote(num_cpus=0.1)(count)}
        self.join = ray.remote(num_cpus=0.1)(join)
        self.tool = ray.remote(num_cpus=0.1)(wait)
        self.llm = ray.remote(num_cpus=w.LLM_CPU)(wait)
        self.make_array = ray.remote(make_array)
        self.array_sum = ray.remote(array_sum)
        self.burn = ray.remote(num_cpus=w.FRACTION)(burn)

    def close(self) -> None:
        self._ray.shutdown()

    # --- workloads --------------------------------------------------------------------------

    def chain(self, length: int, cpu: float) -> float:
        """``length`` dependent no-op tasks of ``cpu``, ``ray.get`` on each before submitting
        the next (the driver sees every hop, as Lattice's head does)."""
        ray, noop = self._ray, self.noop[cpu]
        start = time.perf_counter()
        x = 7
        for _ in range(length):
            x = ray.get(noop.remote(x))
        seconds = time.perf_counter() - start
        w.check(x == 7, "plain Ray chain")
        return seconds

    def chain_refs(self, length: int, cpu: float) -> float:
        """The same chain with each task's ref passed to the next and one ``ray.get`` at the
        end: Ray resolves the hops among its workers, without the driver."""
        ray, noop = self._ray, self.noop[cpu]
        start = time.perf_counter()
        ref = noop.remote(7)
        for _ in range(length - 1):
            ref = noop.remote(ref)
        x = ray.get(ref)
        seconds = time.perf_counter() - start
        w.check(x == 7, "plain Ray chain (refs)")
        return seconds

    def fanout(self, cpu: float) -> float:
        ray, noop = self._ray, self.noop[cpu]
        start = time.perf_counter()
        source = noop.remote(1)
        middle = [noop.remote(source) for _ in range(w.FANOUT_WIDTH)]
        n = ray.get(self.count[cpu].remote(*middle))
        seconds = time.perf_counter() - start
        w.check(n == w.FANOUT_WIDTH, "plain Ray fan-out")
        return seconds

    def fractional(self, rounds: int, expected: list[int]) -> float:
        """FRACTIONAL_TASKS CPU-bound tasks of ``num_cpus=FRACTION`` at once."""
        ray = self._ray
        start = time.perf_counter()
        sums = ray.get([self.burn.remote(rounds, i) for i in range(w.FRACTIONAL_TASKS)])
        seconds = time.perf_counter() - start
        w.check(sums == expected, "plain Ray fractional CPU")
        return seconds

    def agent(self) -> float:
        ray = self._ray
        start = time.perf_counter()
        plan = self.noop[0.1].remote("topics")
        tools = [self.tool.remote(w.TOOL_SECONDS, plan) for _ in range(3)]
        answer = ray.get(self.join.remote(*tools))
        seconds = time.perf_counter() - start
        w.check(answer == ["topics"] * 3, "plain Ray agent")
        return seconds

    def io_bound(self) -> float:
        ray = self._ray
        start = time.perf_counter()
        replies = ray.get([self.llm.remote(w.LLM_SECONDS, f"q{i}") for i in range(w.LLM_CALLS)])
        seconds = time.perf_counter() - start
        w.check(replies == [f"q{i}" for i in range(w.LLM_CALLS)], "plain Ray I/O-bound")
        return seconds

    def big_array(self) -> float:
        ray = self._ray
        start = time.perf_counter()
        total = ray.get(self.array_sum.remote(self.make_array.remote(2)))
        seconds = time.perf_counter() - start
        w.check(total == 2.0 * w.ARRAY_ITEMS, "plain Ray 50 MB array")
        return seconds

    def clients(self, cpu: float) -> float:
        """CLIENTS driver threads at once, each with CLIENT_TASKS no-op tasks of ``cpu``."""
        ray, noop = self._ray, self.noop[cpu]

        def one_client(start: Callable[[], None]) -> float:
            start()
            got = ray.get([noop.remote(i) for i in range(w.CLIENT_TASKS)])
            finished = time.perf_counter()
            w.check(got == list(range(w.CLIENT_TASKS)), "plain Ray clients")
            return finished

        return w.concurrently(w.CLIENTS, one_client)
