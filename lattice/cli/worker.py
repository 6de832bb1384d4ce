"""``lattice start --worker``: join a head with this machine, in the foreground.

Signals: the first SIGINT/SIGTERM deregisters the worker and drains its Ray node (running
tasks get ``--drain-timeout`` seconds), a second one kills the node at once. One that arrives
while the worker is still connecting abandons the attempt.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from types import FrameType

from lattice.core.worker.worker import Worker, head_url
from lattice.exceptions import LatticeUsageError
from lattice.executor.ray.ports import NodePorts

log = logging.getLogger("lattice.worker")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def build_worker(args: argparse.Namespace) -> Worker:
    """The worker the flags describe (``--addr``, resources, ``--token`` or LATTICE_TOKEN).

    Raises:
        LatticeUsageError: no ``--addr``.
        LatticeInputError: a bad resource value or port range.
    """
    if not args.addr:
        raise LatticeUsageError("--worker needs --addr HEAD_HOST:PORT, the head's API address")
    ports = NodePorts.parse(args.ray_node_ports) if args.ray_node_ports else None
    return Worker(
        head_url(args.addr),
        args.token or os.environ.get("LATTICE_TOKEN") or None,
        num_cpus=args.num_cpus,
        memory_mb=args.memory,
        num_gpus=args.num_gpus,
        gpu_mem_mb=args.gpu_mem,
        node_ip=args.node_ip,
        node_ports=ports,
        drain_timeout=args.drain_timeout,
        ray_temp_dir=args.ray_temp_dir,
    )


def run_worker(args: argparse.Namespace) -> int:
    """Run a worker until a signal stops it; 0 after a clean stop, 1 if its Ray node died."""
    worker = build_worker(args)
    # One line per HTTP call to the head says nothing the worker's own lines do not.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if worker.node_id is None:
            # Still connecting (blocked in Ray or HTTP): unwind; stop() cleans up.
            raise KeyboardInterrupt
        if signals == 1:
            log.info("%s: stopping", signal.Signals(signum).name)
            worker.request_stop()
        else:
            worker.abort()

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        worker.start()
    except KeyboardInterrupt:
        log.info("interrupted before the worker was registered")
    finally:
        try:
            worker.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if worker.node_lost:
        log.error("the Ray node of this worker stopped by itself; the worker exits")
        return 1
    return 0
