"""What the SQLite store costs against ``--store memory``: ``python -m benchmarks.bench_store``.

Two heads on the local executor run side by side, one on each store (the SQLite one in a
fresh data directory), and take turns repetition by repetition, so a machine busy with
something else slows both alike. Measured, each a median:

- chain per hop and fan-out tasks/s (the workloads of ``benchmarks.run``): the issue's bound
  is that the store costs at most 10%;
- a 10 000-task fan-out built with ``POST /add_tasks`` (500 tasks a request, as the client
  sends them) and run: the time to build and to run, the slowest ``/add_tasks`` answer, and
  the longest a ``GET /health`` probe waited meanwhile (how long the head's event loop was
  kept from answering anyone);
- head memory over many finished runs of a 10-task workflow, retention at its defaults: the
  resident size at the end against the one after the first 500 runs (bound: within 20%).

``--quick`` takes fewer repetitions and 2 000 runs instead of 10 000. Figures go to
docs/benchmarks.md by hand, with the date and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psutil

from benchmarks import workloads as w
from benchmarks.report import rotate
from lattice import LatticeClient
from lattice.client.core.code import serialize_function
from lattice.serialization import encode_value
from lattice.utils.head import LocalHead

STORES = ("memory", "sqlite")
REQUEST_TASKS = 500
MEMORY_WORKFLOW_TASKS = 10
MEMORY_BASELINE_RUNS = 500


@contextmanager
def head(store: str) -> Iterator[LocalHead]:
    with tempfile.TemporaryDirectory(prefix="lattice-bench-store-") as data_dir:
        args = ["--data-dir", data_dir]
        if store == "memory":
            args += ["--store", "memory"]
        with LocalHead(executor="local", num_cpus=2, extra_args=tuple(args)) as started:
            yield started


class Probe:
    """A thread asking ``GET /health`` back to back; the longest answer it waited for."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self.longest = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=120) as http:
            while not self._stop.is_set():
                start = time.perf_counter()
                http.get("/health").raise_for_status()
                self.longest = max(self.longest, time.perf_counter() - start)
                self._stop.wait(0.01)


def _fanout_bodies(workflow_id: str, width: int) -> tuple[list[dict[str, Any]], list[str]]:
    code_str, code_ser = serialize_function(w.tiny)
    output = {"output_params": {"1": {"key": "y", "data_type": "any"}}}

    def body(task_id: str, given: dict[str, Any]) -> dict[str, Any]:
        return {
            "task_id": task_id,
            "task_name": "tiny",
            "code_str": code_str,
            "code_ser": code_ser,
            "task_input": {"input_params": {"1": {"key": "x", "data_type": "any", **given}}},
            "task_output": output,
        }

    source = str(uuid.uuid4())
    leaves = [str(uuid.uuid4()) for _ in range(width)]
    tasks = [body(source, {"input_schema": "from_user", "value": encode_value(5)})]
    tasks += [body(t, {"input_schema": "from_task", "value": f"{source}.y"}) for t in leaves]
    requests = [
        {"workflow_id": workflow_id, "tasks": tasks[i : i + REQUEST_TASKS], "edges": []}
        for i in range(0, len(tasks), REQUEST_TASKS)
    ]
    return requests, leaves


def big_fanout_once(url: str, width: int) -> dict[str, float]:
    """Build and run one ``width``-task fan-out through the wire API."""
    with httpx.Client(base_url=url, timeout=w.RUN_TIMEOUT) as http, Probe(url) as probe:
        workflow_id = http.post("/create_workflow").json()["workflow_id"]
        requests, leaves = _fanout_bodies(workflow_id, width)
        slowest, start = 0.0, time.perf_counter()
        for body in requests:
            sent = time.perf_counter()
            http.post("/add_tasks", json=body).raise_for_status()
            slowest = max(slowest, time.perf_counter() - sent)
        built = time.perf_counter() - start
        with LatticeClient(url, timeout=w.RUN_TIMEOUT) as client:
            wf = client.get_workflow(workflow_id)
            start = time.perf_counter()
            run_id = wf.run()
            outputs = wf.get_outputs(run_id, timeout=w.RUN_TIMEOUT)
            ran = time.perf_counter() - start
        w.check(len(outputs) == width + 1, "big fan-out")
        w.check(all(outputs[t]["y"] == 5 for t in leaves[:10]), "big fan-out")
        http.delete(f"/runs/{run_id}").raise_for_status()
        http.delete(f"/workflows/{workflow_id}").raise_for_status()
    return {
        "build_s": built,
        "slowest_add_tasks_s": slowest,
        "run_s": ran,
        "longest_health_s": probe.longest,
    }


def memory_runs(url: str, pid: int, runs: int) -> dict[str, float]:
    """``runs`` runs of one 10-task chain, each read back; the head's RSS after the first
    MEMORY_BASELINE_RUNS and at the end, in MB."""
    process = psutil.Process(pid)
    with LatticeClient(url, timeout=w.RUN_TIMEOUT) as client:
        wf = client.create_workflow()
        last = wf.add_task(w.step, inputs={"x": 1})
        for _ in range(MEMORY_WORKFLOW_TASKS - 1):
            last = wf.add_task(w.step, inputs={"x": last.outputs["y"]})
        baseline = 0.0
        start = time.perf_counter()
        for i in range(runs):
            outputs = wf.get_outputs(wf.run(), timeout=w.RUN_TIMEOUT)
            w.check(outputs[last]["y"] == 1, "memory")
            if i + 1 == MEMORY_BASELINE_RUNS:
                baseline = process.memory_info().rss / 2**20
        seconds = time.perf_counter() - start
    end = process.memory_info().rss / 2**20
    return {"rss_at_500_mb": baseline, "rss_end_mb": end, "ratio": end / baseline, "s": seconds}


def per_hop(client: LatticeClient) -> Callable[[], float]:
    hops = w.CHAIN_LENGTH - 1
    return lambda: (w.chain_once(client, w.CHAIN_LENGTH) - w.chain_once(client, 1)) / hops


def fanout_rate(client: LatticeClient) -> Callable[[], float]:
    return lambda: (w.FANOUT_WIDTH + 2) / w.fanout_once(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="chain,fanout,big,memory")
    parser.add_argument("--runs", type=int, default=None, help="runs of the memory workload")
    args = parser.parse_args()
    only = set(args.only.split(","))
    reps, warmup = (3, 1) if args.quick else (7, 2)
    runs = args.runs or (2000 if args.quick else 10_000)
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    with head("memory") as mem, head("sqlite") as lite:
        heads = {"memory": mem, "sqlite": lite}
        clients = {s: LatticeClient(h.url, timeout=w.RUN_TIMEOUT) for s, h in heads.items()}
        try:
            if "chain" in only:
                got = rotate([per_hop(clients[s]) for s in STORES], reps, warmup)
                out["chain_per_hop_ms"] = _compare(got, scale=1e3)
            if "fanout" in only:
                got = rotate([fanout_rate(clients[s]) for s in STORES], reps, warmup)
                out["fanout_tasks_per_s"] = _compare(got, higher_is_better=True)
            if "big" in only:
                big: dict[str, list[dict[str, float]]] = {s: [] for s in STORES}
                for _ in range(1 if args.quick else 3):
                    for store in STORES:
                        big[store].append(big_fanout_once(heads[store].url, w.BIG_FANOUT_WIDTH))
                out["big_fanout"] = {
                    s: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                    for s, rs in big.items()
                }
            if "memory" in only:
                pid = lite.pid
                assert pid is not None
                out["memory_sqlite"] = memory_runs(lite.url, pid, runs)
        finally:
            for client in clients.values():
                client.close()
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


def _compare(
    samples: list[list[float]], *, scale: float = 1.0, higher_is_better: bool = False
) -> dict[str, float]:
    memory, sqlite = (statistics.median(s) * scale for s in samples)
    cost = (memory / sqlite - 1) if higher_is_better else (sqlite / memory - 1)
    return {"memory": memory, "sqlite": sqlite, "sqlite_cost": cost}


if __name__ == "__main__":
    main()
