"""Rows of the results table, their targets, the printed table and the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass(frozen=True)
class Target:
    """A bound on a row's figure: ``figure <= limit`` (or ``>=`` when ``at_least``)."""

    text: str
    limit: float
    at_least: bool = False

    def met(self, figure: float) -> bool:
        return figure >= self.limit if self.at_least else figure <= self.limit


@dataclass
class Row:
    workload: str
    executor: str
    #: Lattice's figure and the baseline's, as printed (units included)
    lattice: str
    baseline: str
    #: the number compared with the target (a ratio, or a bound in the target's unit)
    figure: float
    figure_text: str
    target: Target | None
    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "PASS" if self.target.met(self.figure) else "FAIL"


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.3f} s"


def alternate(
    lattice: Callable[[], float], baseline: Callable[[], float] | None, reps: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Run ``warmup`` untimed rounds, then ``reps`` timed ones, Lattice and the baseline taking
    turns, so that a machine busy with something else slows both alike."""
    if baseline is None:
        (ours,) = rotate([lattice], reps, warmup)
        return ours, []
    ours, theirs = rotate([lattice, baseline], reps, warmup)
    return ours, theirs


def rotate(sides: Sequence[Callable[[], float]], reps: int, warmup: int) -> list[list[float]]:
    """:func:`alternate` for any number of sides: each round runs every side once, in turn;
    the samples of each side."""
    for _ in range(warmup):
        for side in sides:
            side()
    samples: list[list[float]] = [[] for _ in sides]
    for _ in range(reps):
        for side, got in zip(sides, samples, strict=True):
            got.append(side())
    return samples


# --- output ---------------------------------------------------------------------------------

HEADER = ("workload", "executor", "Lattice", "baseline", "ratio/bound", "target", "result")


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (printed, and pasted into docs/benchmarks.md)."""
    cells = [HEADER] + [
        (
            r.workload,
            r.executor,
            r.lattice,
            r.baseline,
            r.figure_text,
            _target_text(r.target),
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(c[i].ljust(widths[i]) for i in range(len(c))) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _target_text(target: Target | None) -> str:
    if target is None:
        return "-"
    return target.text


def machine() -> dict[str, Any]:
    gpu = "none"
    if shutil.which("nvidia-smi"):
        found = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=False
        ).stdout.strip()
        gpu = found or "none"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(rows: Sequence[Row], settings: dict[str, Any], path: Path = RESULTS) -> Path:
    import ray

    doc = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "ray": ray.__version__,
        "settings": settings,
        "rows": [
            {
                **{k: v for k, v in asdict(r).items() if k != "target"},
                "target": None if r.target is None else asdict(r.target),
                "verdict": r.verdict,
            }
            for r in rows
        ],
    }
    doc["commit"] = _commit()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    path.write_text(text)
    # Kept beside latest.json under the run's date and commit: the samples behind a table in
    # docs/benchmarks.md stay in the repository.
    path.with_name(f"{doc['date']}-{doc['commit']}.json").write_text(text)
    return path


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=RESULTS.parent.parent,
    )
    return done.stdout.strip() or "unknown"
