"""The benchmark suite: ``python -m benchmarks.run [--quick] [--only chain,fanout]``.

Starts a head for each executor (``LocalHead``: Ray, then local), runs every workload through
the public client, runs the plain-Ray equivalent in the same run (a private ``ray.init`` in
this process), prints a table and writes ``benchmarks/results/latest.json``. Lattice and
the baseline take turns repetition by repetition, never at the same time; every figure is a
median. See docs/benchmarks.md for what each workload measures and why.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from benchmarks import workloads as w
from benchmarks.plain_ray import PlainRay
from benchmarks.report import (
    Row,
    Target,
    alternate,
    median,
    ms,
    rotate,
    secs,
    table,
    write_json,
)
from lattice import LatticeClient
from lattice.utils.head import LocalHead

EXECUTORS = ("ray", "local")
NUM_CPUS = 2


@dataclass
class Bench:
    executor: str
    url: str
    client: LatticeClient
    plain: PlainRay
    head_pid: int
    reps: int
    warmup: int
    quick: bool

    def head_rss(self) -> int:
        return int(psutil.Process(self.head_pid).memory_info().rss)


# --- workloads: each returns its rows -------------------------------------------------------


#: the per-task requests each workload is run with: (label, cpu_bound, Ray's num_cpus)
REQUESTS = (("cpu 0.1", False, 0.1), ("cpu 1", True, 1.0))


def chain(b: Bench) -> list[Row]:
    """Per dependent hop: the slope between a chain of CHAIN_LENGTH and a chain of one, so the
    fixed cost of a run (run(), opening the result stream) is not counted as hops. Plain Ray
    both ways: ``ray.get`` on each hop (the driver sees every hop, as Lattice's head does),
    and refs passed along (Ray resolves the hops among its workers)."""
    hops = w.CHAIN_LENGTH - 1

    def per_hop(run: Callable[[int], float]) -> Callable[[], float]:
        return lambda: (run(w.CHAIN_LENGTH) - run(1)) / hops

    rows = []
    variants = REQUESTS if b.executor == "ray" else REQUESTS[:1]
    for label, cpu_bound, cpu in variants:
        ours, per_get, refs = rotate(
            [
                per_hop(lambda n, cb=cpu_bound: w.chain_once(b.client, n, cb)),  # type: ignore[misc]
                per_hop(lambda n, c=cpu: b.plain.chain(n, c)),  # type: ignore[misc]
                per_hop(lambda n, c=cpu: b.plain.chain_refs(n, c)),  # type: ignore[misc]
            ],
            b.reps,
            b.warmup,
        )
        hop, base, base_refs = median(ours), median(per_get), median(refs)
        name = f"chain of {w.CHAIN_LENGTH}, per hop ({label})"
        samples = {"lattice_s": ours, "plain_ray_get_s": per_get, "plain_ray_refs_s": refs}
        if b.executor == "ray":
            target = Target("<= 1.0x plain Ray", 1.0)
            row = Row(name, b.executor, ms(hop), ms(base), hop / base, f"{hop / base:.2f}x", target)
        else:
            target = Target("< 0.5 ms", 0.5)
            row = Row(name, b.executor, ms(hop), ms(base), hop * 1e3, ms(hop), target)
        row.samples = samples
        rows.append(row)
        rows.append(
            Row(
                f"  same, against plain Ray passing refs along ({label})",
                b.executor,
                ms(hop),
                ms(base_refs) + " (refs)",
                hop / base_refs,
                f"{hop / base_refs:.2f}x",
                None,
            )
        )
    return rows


def fanout(b: Bench) -> list[Row]:
    tasks = w.FANOUT_WIDTH + 2
    rows = []
    for label, cpu_bound, cpu in REQUESTS:
        ours, theirs = alternate(
            lambda cb=cpu_bound: w.fanout_once(b.client, cb),  # type: ignore[misc]
            lambda c=cpu: b.plain.fanout(c),  # type: ignore[misc]
            b.reps,
            b.warmup,
        )
        rate, base = tasks / median(ours), tasks / median(theirs)
        target = Target(">= 1.0x plain Ray", 1.0, at_least=True) if b.executor == "ray" else None
        rows.append(
            Row(
                f"fan-out 1 -> {w.FANOUT_WIDTH} -> 1 ({label})",
                b.executor,
                f"{rate:.0f} tasks/s",
                f"{base:.0f} tasks/s",
                rate / base,
                f"{rate / base:.2f}x",
                target,
                {"lattice_s": ours, "plain_ray_s": theirs},
            )
        )
    return rows


def build(b: Bench) -> list[Row]:
    ours, _ = alternate(lambda: w.build_once(b.client), None, b.reps, b.warmup)
    took = median(ours)
    target = Target("< 50 ms", 50.0)
    name = f"build a {w.BUILD_TASKS}-task workflow"
    return [Row(name, b.executor, ms(took), "-", took * 1e3, ms(took), target, {"lattice_s": ours})]


def agent(b: Bench) -> list[Row]:
    ours, theirs = alternate(lambda: w.agent_once(b.client), b.plain.agent, b.reps, b.warmup)
    took = median(ours)
    critical = w.TOOL_SECONDS
    return [
        Row(
            "agent: analyze -> 3 x 1 s tools -> synthesize",
            b.executor,
            secs(took),
            secs(median(theirs)),
            took / critical,
            f"{took / critical:.3f}x critical path",
            Target("< 1.05x", 1.05),
            {"lattice_s": ours, "plain_ray_s": theirs},
        )
    ]


def io_bound(b: Bench) -> list[Row]:
    ours, theirs = alternate(lambda: w.io_bound_once(b.client), b.plain.io_bound, b.reps, b.warmup)
    took = median(ours)
    return [
        Row(
            f"{w.LLM_CALLS} x {w.LLM_SECONDS} s I/O-bound calls (cpu {w.LLM_CPU})",
            b.executor,
            secs(took),
            secs(median(theirs)) + f" (num_cpus={w.LLM_CPU})",
            took,
            secs(took),
            Target("< 0.75 s", 0.75),
            {"lattice_s": ours, "plain_ray_s": theirs},
        )
    ]


def _versus_plain(
    name: str, b: Bench, ours: list[float], theirs: list[float], target: Target | None
) -> Row:
    """A row of median seconds against plain Ray's, judged by their ratio."""
    took, base = median(ours), median(theirs)
    samples = {"lattice_s": ours, "plain_ray_s": theirs}
    return Row(
        name, b.executor, ms(took), ms(base), took / base, f"{took / base:.2f}x", target, samples
    )


def big_array(b: Bench) -> list[Row]:
    ours, theirs = alternate(
        lambda: w.big_array_once(b.client), b.plain.big_array, b.reps, b.warmup
    )
    target = Target("<= 1.5x plain Ray", 1.5) if b.executor == "ray" else None
    return [_versus_plain("50 MB array from one task to the next", b, ours, theirs, target)]


def clients(b: Bench) -> list[Row]:
    rows = []
    for label, cpu_bound, cpu in REQUESTS:
        ours, theirs = alternate(
            lambda cb=cpu_bound: w.clients_once(b.url, cb),  # type: ignore[misc]
            lambda c=cpu: b.plain.clients(c),  # type: ignore[misc]
            b.reps,
            b.warmup,
        )
        name = f"{w.CLIENTS} concurrent clients x {w.CLIENT_TASKS} tasks ({label})"
        target = Target("<= 1.0x plain Ray", 1.0) if b.executor == "ray" else None
        rows.append(_versus_plain(name, b, ours, theirs, target))
    return rows


def fractional(b: Bench) -> list[Row]:
    """FRACTIONAL_TASKS CPU-bound tasks of cpu FRACTION at once, against the same tasks at
    cpu 1 (Lattice) and against plain Ray's ``num_cpus=FRACTION``."""
    rounds = w.calibrate(w.FRACTIONAL_SECONDS)
    expected = [w.burn(rounds, i) for i in range(w.FRACTIONAL_TASKS)]
    processes: list[int] = []

    def share() -> float:
        got = w.fractional_once(b.client, rounds, expected, share=True)
        processes.append(got["processes"])
        return float(got["seconds"])

    def whole() -> float:
        return float(w.fractional_once(b.client, rounds, expected, share=False)["seconds"])

    ours, ours_whole, theirs = rotate(
        [share, whole, lambda: b.plain.fractional(rounds, expected)], b.reps, b.warmup
    )
    took, took_whole, base = median(ours), median(ours_whole), median(theirs)
    name = f"{w.FRACTIONAL_TASKS} CPU-bound tasks of cpu {w.FRACTION}"
    samples = {"lattice_share_s": ours, "lattice_cpu1_s": ours_whole, "plain_ray_s": theirs}
    extra = {"rounds": rounds, "processes_per_run": processes}
    return [
        Row(
            f"{name} vs the same at cpu 1",
            b.executor,
            secs(took),
            secs(took_whole) + " at cpu 1",
            took / took_whole,
            f"{took / took_whole:.2f}x",
            Target("<= 1.1x cpu 1", 1.1),
            samples,
            extra,
        ),
        Row(
            f"{name} vs plain Ray",
            b.executor,
            secs(took),
            secs(base) + f" (num_cpus={w.FRACTION})",
            took / base,
            f"{took / base:.2f}x",
            None,
        ),
    ]


def busy(b: Bench) -> list[Row]:
    alone, beside = alternate(
        lambda: w.noop_run_once(b.client, beside_long_task=False),
        lambda: w.noop_run_once(b.client, beside_long_task=True),
        b.reps,
        b.warmup,
    )
    extra = median(beside) - median(alone)
    return [
        Row(
            f"no-op run beside a {w.LONG_TASK_SECONDS:g} s task (vs alone)",
            b.executor,
            ms(median(beside)),
            ms(median(alone)) + " alone",
            extra * 1e3,
            f"{extra * 1e3:+.2f} ms",
            Target("< +20 ms", 20.0),
            {"beside_s": beside, "alone_s": alone},
        )
    ]


def big_fanout(b: Bench) -> list[Row]:
    # One workflow, run twice (see big_fanout_once): the point is that it completes and that a
    # retired run leaves nothing behind.
    result = w.big_fanout_once(b.client, b.head_rss)
    cold = result["first_run"]
    before, end, after = result["rss_before"], result["rss_end"], result["rss_after"]
    growth = (after - before) / before
    mib = 2**20
    return [
        Row(
            f"{w.BIG_FANOUT_WIDTH}-task fan-out, head memory",
            b.executor,
            secs(result["seconds"]),
            f"RSS {before / mib:.0f} -> {end / mib:.0f} -> {after / mib:.0f} MiB "
            f"(first run: {cold['rss_built'] / mib:.0f} -> {cold['rss_after'] / mib:.0f})",
            growth * 100,
            f"{growth * 100:+.1f}% after retire",
            Target("completes, <= +10%", 10.0),
            {"lattice_s": [result["seconds"]]},
            extra=result,
        )
    ]


def langgraph(b: Bench) -> list[Row]:
    from benchmarks import bench_langgraph as lg

    reps, calls = (3, 50) if b.quick else (b.reps, 200)
    # A head of its own with a slot per branch, as bench_langgraph runs by default: natively
    # the four branches start at once too (and share the two cores the same way).
    with LocalHead(executor="ray", num_cpus=lg.BRANCHES) as head:
        result = lg.run(head.url, reps, calls)
    ratio = result["ratio"]
    # On the suite's own head (NUM_CPUS slots): branches of cpu 0.5 against the same at cpu 1.
    frac = lg.fractional(b.url, reps)
    share, whole, native = (median(frac[k]) for k in ("share_s", "cpu1_s", "native_s"))
    return [
        Row(
            f"LangGraph {lg.BRANCHES}-branch CPU fan-out",
            b.executor,
            secs(result["lattice_median_s"]),
            secs(result["native_median_s"]) + " native",
            ratio,
            f"{ratio:.2f}x",
            Target(f"<= {lg.TARGET_RATIO}x native", lg.TARGET_RATIO),
            {"lattice_s": result["lattice_seconds"], "native_s": result["native_seconds"]},
        ),
        Row(
            "LangGraph decorated no-op node, per call",
            b.executor,
            f"{result['noop_lattice_median_ms']:.2f} ms",
            f"{result['noop_native_median_ms']:.4f} ms native",
            result["noop_lattice_median_ms"],
            f"{result['noop_lattice_median_ms']:.2f} ms",
            Target("< 5 ms", 5.0),
        ),
        Row(
            f"LangGraph {lg.BRANCHES} CPU-bound nodes of cpu {frac['share']} vs cpu 1",
            b.executor,
            secs(share),
            secs(whole) + f" at cpu 1 ({secs(native)} native)",
            share / whole,
            f"{share / whole:.2f}x",
            Target("<= 1.1x cpu 1", 1.1),
            {k: frac[k] for k in ("share_s", "cpu1_s", "native_s")},
            {"rounds": frac["rounds"], "head_num_cpus": NUM_CPUS},
        ),
    ]


#: name -> (function, executors it runs on), in the order they run
WORKLOADS: dict[str, tuple[Callable[[Bench], list[Row]], tuple[str, ...]]] = {
    "chain": (chain, EXECUTORS),
    "fanout": (fanout, EXECUTORS),
    "build": (build, EXECUTORS),
    "agent": (agent, EXECUTORS),
    "io": (io_bound, EXECUTORS),
    "array": (big_array, EXECUTORS),
    "clients": (clients, EXECUTORS),
    "fractional": (fractional, ("ray",)),
    "busy": (busy, EXECUTORS),
    "langgraph": (langgraph, ("ray",)),
    "big-fanout": (big_fanout, EXECUTORS),
}


# --- driver ---------------------------------------------------------------------------------


def run_executor(
    executor: str, names: list[str], plain: PlainRay, reps: int, warmup: int, quick: bool
) -> list[Row]:
    print(f"\n== {executor} executor: starting a head ...", flush=True)
    rows: list[Row] = []
    with LocalHead(executor=executor, num_cpus=NUM_CPUS) as head:
        assert head.pid is not None
        with LatticeClient(head.url, timeout=w.RUN_TIMEOUT) as client:
            bench = Bench(executor, head.url, client, plain, head.pid, reps, warmup, quick)
            for name in names:
                fn, executors = WORKLOADS[name]
                if executor not in executors:
                    continue
                started = time.perf_counter()
                print(f"-- {name} ({executor}) ...", flush=True)
                new = fn(bench)
                for row in new:
                    print(f"   {row.workload}: {row.lattice} vs {row.baseline} -> {row.verdict}")
                print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
                rows.extend(new)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--only", help=f"comma-separated workloads (default: all): {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--executors", default=",".join(EXECUTORS), help="comma-separated: ray,local"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (3, 1 warm-up)")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 7, --quick 3)")
    args = parser.parse_args(argv)
    args.names = list(WORKLOADS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in args.names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    args.executor_list = [e.strip() for e in args.executors.split(",")]
    bad = [e for e in args.executor_list if e not in EXECUTORS]
    if bad:
        parser.error(f"unknown executor(s) {bad}; choose from {', '.join(EXECUTORS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    print("starting the plain-Ray baseline (a private Ray in this process) ...", flush=True)
    plain = PlainRay(num_cpus=NUM_CPUS)
    rows: list[Row] = []
    try:
        for executor in args.executor_list:
            rows += run_executor(executor, args.names, plain, reps, warmup, args.quick)
    finally:
        plain.close()
    print()
    print(table(rows))
    settings = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "reps": reps,
        "warmup": warmup,
        "num_cpus": NUM_CPUS,
        "workloads": args.names,
    }
    path = write_json(rows, settings)
    print(f"\nwritten to {path}")
    failed = [r for r in rows if r.verdict == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
