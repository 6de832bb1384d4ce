"""The same workloads written directly against Ray: the baselines.

:class:`PlainRay` starts a private Ray (``ray.init(address="local", num_cpus=2)``) in the
benchmark process. It is a cluster of its own, separate from the one the Lattice head runs in
its process; both share the machine's cores, so the suite never runs the two at the same time.
Each method runs one repetition and returns seconds. Remote functions use Ray's defaults
(``num_cpus=1``) unless the workload says otherwise, as a Ray user would write them.
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

        self.noop = ray.remote(noop)
        self.light_noop = ray.remote(num_cpus=0.1)(noop)
        self.count = ray.remote(count)
        self.join = ray.remote(num_cpus=0.1)(join)
        self.tool = ray.remote(num_cpus=0.1)(wait)
        #: what the issue describes: a Ray user's I/O-bound task asks for no CPU at all
        self.llm = ray.remote(num_cpus=0)(wait)
        self.make_array = ray.remote(make_array)
        self.array_sum = ray.remote(array_sum)

    def close(self) -> None:
        self._ray.shutdown()

    # --- workloads --------------------------------------------------------------------------

    def chain(self, length: int) -> float:
        """``length`` dependent no-op tasks, ``ray.get`` on each before submitting the next."""
        ray = self._ray
        start = time.perf_counter()
        x = 7
        for _ in range(length):
            x = ray.get(self.noop.remote(x))
        seconds = time.perf_counter() - start
        w.check(x == 7, "plain Ray chain")
        return seconds

    def fanout(self) -> float:
        ray = self._ray
        start = time.perf_counter()
        source = self.noop.remote(1)
        middle = [self.noop.remote(source) for _ in range(w.FANOUT_WIDTH)]
        n = ray.get(self.count.remote(*middle))
        seconds = time.perf_counter() - start
        w.check(n == w.FANOUT_WIDTH, "plain Ray fan-out")
        return seconds

    def agent(self) -> float:
        ray = self._ray
        start = time.perf_counter()
        plan = self.light_noop.remote("topics")
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

    def clients(self) -> float:
        """CLIENTS driver threads at once, each with CLIENT_TASKS no-op tasks."""
        ray = self._ray

        def one_client(start: Callable[[], None]) -> float:
            start()
            ray.get([self.noop.remote(i) for i in range(w.CLIENT_TASKS)])
            return time.perf_counter()

        return w.concurrently(w.CLIENTS, one_client)
