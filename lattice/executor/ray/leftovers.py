"""The record a head keeps of the Ray head it started, so the next head can stop leftovers.

A head killed by SIGKILL cannot stop its Ray node (``ray start --block`` runs in a session of
its own, so that Ctrl-C reaches the server first). The head writes the ``ray start`` process's
pid and start time into its data directory; the next head on that directory stops that
process and everything under it before starting its own, and says so. The start time makes
sure a recycled pid is never taken for the leftover.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

RECORD_NAME = "ray-head.json"


def remember(path: Path, pid: int) -> None:
    """Record that ``pid`` is the Ray head this process started."""
    process = psutil.Process(pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "create_time": process.create_time()}))


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)


def stop_leftovers(path: Path) -> int | None:
    """Stop the Ray head ``path`` records, if it still runs; return its pid if it did."""
    try:
        record = json.loads(path.read_text())
        pid, started = int(record["pid"]), float(record["create_time"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring an unreadable record of a previous Ray head: %s", path)
        forget(path)
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.01:
            raise psutil.NoSuchProcess(pid)  # the pid was reused: not ours
        family = [*process.children(recursive=True), process]
    except psutil.NoSuchProcess:
        forget(path)
        return None
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=30)
    forget(path)
    return pid
