"""The workloads, run through Lattice's public client (``LatticeClient``, ``@task``).

Each ``*_once`` function runs one repetition against a head and returns what it measured
(seconds unless its name says otherwise). A run is timed from ``run()`` until
``get_outputs()`` holds every result; building the workflow is not part of it, except in
:func:`build_once`, which times exactly that. Every run checks its results.

Task functions live at module level; the client ships them to the head by value (this
package is not installed there).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from lattice import LatticeClient, LatticeWorkflow, task

TOOL_SECONDS = 1.0
LLM_SECONDS = 0.5
LLM_CALLS = 32
#: what each I/O-bound call asks for, on both sides
LLM_CPU = 0.05
#: CPU-bound tasks of a fractional share: how many, their share, their CPU seconds each
FRACTIONAL_TASKS = 4
FRACTION = 0.5
FRACTIONAL_SECONDS = 0.4
FANOUT_WIDTH = 100
BIG_FANOUT_WIDTH = 10_000
BUILD_TASKS = 100
CHAIN_LENGTH = 30
#: 50 MiB of float64
ARRAY_ITEMS = 50 * 1024 * 1024 // 8
CLIENTS = 10
CLIENT_TASKS = 10
LONG_TASK_SECONDS = 3.0
RUN_TIMEOUT = 600.0


# --- task functions -------------------------------------------------------------------------


def burn(rounds: int, seed: int) -> int:
    """Pure-Python CPU work (holds the GIL throughout); a checksum of it."""
    acc = seed
    for i in range(rounds):
        acc = (acc * 1103515245 + i) % 2147483648
    return acc


def calibrate(seconds: float) -> int:
    """Rounds of :func:`burn` that take about ``seconds`` in this process: a short probe
    (best of 3) gives a first guess, one full-length run corrects it."""

    def timed(rounds: int) -> float:
        start = time.perf_counter()
        burn(rounds, 1)
        return time.perf_counter() - start

    probe = 200_000
    best = min(timed(probe) for _ in range(3))
    rounds = max(1, int(probe * seconds / best))
    return max(1, int(rounds * seconds / timed(rounds)))


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def step(params: dict[str, Any]) -> dict[str, Any]:
    """A no-op declared light (cpu 0.1): the framework's cost is all there is to see."""
    return {"y": params["x"]}


@task(inputs=["x"], outputs=["y"])
def step_cpu(params: dict[str, Any]) -> dict[str, Any]:
    """The same no-op with the default request (cpu 1): a process of its own on Ray."""
    return {"y": params["x"]}


@task(inputs=[f"p{i}" for i in range(FANOUT_WIDTH)], outputs=["n"], resources={"cpu": 0.1})
def gather(params: dict[str, Any]) -> dict[str, Any]:
    return {"n": sum(1 for k in params if k.startswith("p"))}


@task(inputs=[f"p{i}" for i in range(FANOUT_WIDTH)], outputs=["n"])
def gather_cpu(params: dict[str, Any]) -> dict[str, Any]:
    """:func:`gather` with the default request (cpu 1)."""
    return {"n": sum(1 for k in params if k.startswith("p"))}


@task(inputs=["rounds", "seed"], outputs=["checksum", "pid"], resources={"cpu": FRACTION})
def burn_share(params: dict[str, Any]) -> dict[str, Any]:
    """CPU-bound work declared with a fractional share (cpu 0.5)."""
    return {"checksum": burn(params["rounds"], params["seed"]), "pid": os.getpid()}


@task(inputs=["rounds", "seed"], outputs=["checksum", "pid"])
def burn_whole(params: dict[str, Any]) -> dict[str, Any]:
    """The same work with the default request (cpu 1)."""
    return {"checksum": burn(params["rounds"], params["seed"]), "pid": os.getpid()}


@task(inputs=["question"], outputs=["topics"], resources={"cpu": 0.1})
def analyze(params: dict[str, Any]) -> dict[str, Any]:
    return {"topics": params["question"].split()[:3]}


@task(inputs=["topics", "tool"], outputs=["finding"], resources={"cpu": 0.1})
def call_tool(params: dict[str, Any]) -> dict[str, Any]:
    time.sleep(TOOL_SECONDS)  # a web search or an API call: waiting, not computing
    return {"finding": f"{params['tool']}: {' '.join(params['topics'])}"}


@task(inputs=["a", "b", "c"], outputs=["answer"], resources={"cpu": 0.1})
def synthesize(params: dict[str, Any]) -> dict[str, Any]:
    return {"answer": " | ".join(params[k] for k in "abc")}


@task(inputs=["prompt"], outputs=["reply"], resources={"cpu": LLM_CPU})
def llm_call(params: dict[str, Any]) -> dict[str, Any]:
    time.sleep(LLM_SECONDS)  # the model server thinks; this task only waits
    return {"reply": params["prompt"].upper()}


@task(inputs=["seed"], outputs=["array"])
def make_array(params: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    return {"array": np.full(ARRAY_ITEMS, float(params["seed"]))}


@task(inputs=["array"], outputs=["total"])
def array_sum(params: dict[str, Any]) -> dict[str, Any]:
    return {"total": float(params["array"].sum())}


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.01})
def tiny(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": params["x"]}


@task(inputs=["seconds"], outputs=["slept"], resources={"cpu": 0.1})
def long_wait(params: dict[str, Any]) -> dict[str, Any]:
    time.sleep(params["seconds"])
    return {"slept": params["seconds"]}


# --- helpers --------------------------------------------------------------------------------


def timed_run(wf: LatticeWorkflow) -> tuple[float, Any]:
    """Seconds from ``run()`` until every result is in; and the outputs."""
    start = time.perf_counter()
    run_id = wf.run()
    outputs = wf.get_outputs(run_id, timeout=RUN_TIMEOUT)
    return time.perf_counter() - start, outputs


def check(ok: bool, what: str) -> None:
    """A benchmark that computes the wrong thing measures nothing: stop it."""
    if not ok:
        raise AssertionError(f"wrong result in the {what} workload")


# --- workloads ------------------------------------------------------------------------------


def chain_once(client: LatticeClient, length: int, cpu_bound: bool = False) -> float:
    """``length`` dependent no-op tasks."""
    fn = step_cpu if cpu_bound else step
    wf = client.create_workflow()
    last = wf.add_task(fn, inputs={"x": 7})
    for _ in range(length - 1):
        last = wf.add_task(fn, inputs={"x": last.outputs["y"]})
    seconds, outputs = timed_run(wf)
    check(outputs[last]["y"] == 7, "chain")
    return seconds


def fanout_once(client: LatticeClient, cpu_bound: bool = False) -> float:
    """One source, FANOUT_WIDTH no-op tasks that read it, one sink that reads them all; all of
    cpu 0.1, or (``cpu_bound``) of the default cpu 1."""
    fn, sink_fn = (step_cpu, gather_cpu) if cpu_bound else (step, gather)
    wf = client.create_workflow()
    source = wf.add_task(fn, inputs={"x": 1})
    middle = [wf.add_task(fn, inputs={"x": source.outputs["y"]}) for _ in range(FANOUT_WIDTH)]
    sink = wf.add_task(sink_fn, inputs={f"p{i}": m.outputs["y"] for i, m in enumerate(middle)})
    seconds, outputs = timed_run(wf)
    check(outputs[sink]["n"] == FANOUT_WIDTH, "fan-out")
    return seconds


def agent_once(client: LatticeClient) -> float:
    """analyze -> three 1 s tool calls -> synthesize (critical path: one tool call)."""
    wf = client.create_workflow()
    plan = wf.add_task(analyze, inputs={"question": "how do agent runtimes schedule tools"})
    tools = [
        wf.add_task(call_tool, inputs={"topics": plan.outputs["topics"], "tool": name})
        for name in ("search", "calculator", "database")
    ]
    final = wf.add_task(
        synthesize, inputs={k: t.outputs["finding"] for k, t in zip("abc", tools, strict=True)}
    )
    seconds, outputs = timed_run(wf)
    check(outputs[final]["answer"].count("|") == 2, "agent")
    return seconds


def io_bound_once(client: LatticeClient) -> float:
    """LLM_CALLS independent calls that each wait LLM_SECONDS, declared cpu 0.05."""
    wf = client.create_workflow()
    calls = [wf.add_task(llm_call, inputs={"prompt": f"q{i}"}) for i in range(LLM_CALLS)]
    seconds, outputs = timed_run(wf)
    check(all(outputs[c]["reply"] == f"Q{i}" for i, c in enumerate(calls)), "I/O-bound")
    return seconds


def fractional_once(
    client: LatticeClient, rounds: int, expected: list[int], share: bool
) -> dict[str, Any]:
    """FRACTIONAL_TASKS CPU-bound tasks at once, of cpu FRACTION (``share``) or cpu 1:
    seconds, and how many processes ran them."""
    fn = burn_share if share else burn_whole
    wf = client.create_workflow()
    tasks = [wf.add_task(fn, inputs={"rounds": rounds, "seed": i}) for i in range(FRACTIONAL_TASKS)]
    seconds, outputs = timed_run(wf)
    check([outputs[t]["checksum"] for t in tasks] == expected, "fractional CPU")
    return {"seconds": seconds, "processes": len({outputs[t]["pid"] for t in tasks})}


def big_array_once(client: LatticeClient) -> float:
    """Task A makes a 50 MB array, task B sums it: seconds from run() to B's result."""
    wf = client.create_workflow()
    a = wf.add_task(make_array, inputs={"seed": 2})
    b = wf.add_task(array_sum, inputs={"array": a.outputs["array"]})
    start = time.perf_counter()
    run_id = wf.run()
    total = wf.get_outputs(run_id, timeout=RUN_TIMEOUT)[b]["total"]
    seconds = time.perf_counter() - start
    check(total == 2.0 * ARRAY_ITEMS, "50 MB array")
    return seconds


def build_once(client: LatticeClient) -> float:
    """create_workflow, BUILD_TASKS add_task calls (a chain), run(): the client's cost."""
    start = time.perf_counter()
    wf = client.create_workflow()
    last = wf.add_task(step, inputs={"x": 1})
    for _ in range(BUILD_TASKS - 1):
        last = wf.add_task(step, inputs={"x": last.outputs["y"]})
    run_id = wf.run()
    seconds = time.perf_counter() - start
    wf.get_outputs(run_id, timeout=RUN_TIMEOUT)  # not timed: let it finish before the next
    return seconds


def concurrently(count: int, one: Callable[[Callable[[], None]], float]) -> float:
    """Run ``one(start)`` on ``count`` threads at once. Each does its untimed preparation,
    calls ``start()`` (which returns when every thread is ready) and returns the moment it
    finished. Seconds from the common start until the last finish; a thread's error is raised
    here, traceback and all."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []
    done: list[float] = []

    def thread() -> None:
        try:
            done.append(one(barrier.wait))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=thread) for _ in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(done) - start


def clients_once(url: str, cpu_bound: bool = False) -> float:
    """CLIENTS clients at once, each with its own connection, each running a fan-out of
    CLIENT_TASKS no-op tasks (cpu 0.1, or the default cpu 1); seconds until the last client
    has all its results."""
    fn = step_cpu if cpu_bound else step

    def one_client(start: Callable[[], None]) -> float:
        with LatticeClient(url, timeout=RUN_TIMEOUT) as client:
            wf = client.create_workflow()
            tasks = [wf.add_task(fn, inputs={"x": i}) for i in range(CLIENT_TASKS)]
            start()
            outputs = wf.get_outputs(wf.run(), timeout=RUN_TIMEOUT)
            finished = time.perf_counter()
            check(all(outputs[t]["y"] == i for i, t in enumerate(tasks)), "clients")
            return finished

    return concurrently(CLIENTS, one_client)


def noop_run_once(client: LatticeClient, *, beside_long_task: bool) -> float:
    """Seconds for a one-task no-op run, alone or while another run's 3 s task runs."""
    long_run = None
    if beside_long_task:
        busy = client.create_workflow()
        busy.add_task(long_wait, inputs={"seconds": LONG_TASK_SECONDS})
        long_run = (busy, busy.run())
        # Wait until its task has started, so that the no-op meets a busy engine.
        for message in busy.stream(long_run[1], timeout=RUN_TIMEOUT):
            if message["type"] == "start_task":
                break
    wf = client.create_workflow()
    only = wf.add_task(step, inputs={"x": 3})
    seconds, outputs = timed_run(wf)
    check(outputs[only]["y"] == 3, "no-op run")
    if long_run is not None:
        busy, run_id = long_run
        busy.get_outputs(run_id, timeout=RUN_TIMEOUT)
    return seconds


def big_fanout_once(client: LatticeClient, rss: Callable[[], int]) -> dict[str, Any]:
    """One source, BIG_FANOUT_WIDTH tiny tasks, run twice; the head's memory (``rss()``,
    bytes) along the way.

    The first run (not timed) grows what a head keeps for good once it has run that much at
    once (task threads, worker leases, allocator arenas): ``first_run`` has the memory once
    the workflow is built and after that run was retired. The second run is timed, and its
    figures are the memory before it, when it has ended, and after its results were read and
    it was retired (``DELETE /runs/{id}``): whether a run leaves anything behind.
    """
    wf = client.create_workflow()
    source = wf.add_task(tiny, inputs={"x": 5})
    leaves = [wf.add_task(tiny, inputs={"x": source.outputs["y"]}) for _ in range(BIG_FANOUT_WIDTH)]
    wf.flush()
    built = rss()

    def run_and_retire() -> tuple[float, int]:
        start = time.perf_counter()
        run_id = wf.run()
        outputs = wf.get_outputs(run_id, timeout=RUN_TIMEOUT)
        seconds = time.perf_counter() - start
        at_end = rss()
        check(len(outputs) == BIG_FANOUT_WIDTH + 1, "10 000-task fan-out")
        check(all(outputs[t]["y"] == 5 for t in leaves), "10 000-task fan-out")
        del outputs
        response = httpx.delete(f"{client.server_url}/runs/{run_id}", timeout=RUN_TIMEOUT)
        response.raise_for_status()
        return seconds, at_end

    run_and_retire()
    before = rss()
    seconds, at_end = run_and_retire()
    return {
        "seconds": seconds,
        "rss_before": before,
        "rss_end": at_end,
        "rss_after": rss(),
        "first_run": {"rss_built": built, "rss_after": before},
    }
