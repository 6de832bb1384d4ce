"""``lattice`` command line: start a head or a worker, inspect a cluster.

The CLI turns flags and environment into settings values; nothing else reads either.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from lattice.config.settings import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_RUN_AGE,
    DEFAULT_MAX_WORKFLOW_CODE_BYTES,
    DEFAULT_PORT,
    DEFAULT_RAY_PORT,
    ServerSettings,
)
from lattice.core.store.factory import default_store_spec
from lattice.exceptions import LatticeError, LatticeUsageError
from lattice.executor.ray.ports import NodePorts
from lattice.vocabulary import MB, SandboxLevel, SandboxSpec

log = logging.getLogger("lattice")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds (Python's default is 0.005); see run_head
HEAD_SWITCH_INTERVAL = 0.0005
DATA_DIR_ENV = "LATTICE_DATA_DIR"
DEFAULT_DATA_DIR = "~/.lattice"


def _head_settings(args: argparse.Namespace) -> ServerSettings:
    sandbox = SandboxSpec(
        level=SandboxLevel.parse(args.sandbox),
        cpu_time_limit=args.task_cpu_time_limit,
        memory_limit_mb=args.task_memory_limit,
        docker_image=args.docker_image,
    )
    return ServerSettings(
        host=args.host,
        port=args.port,
        executor=args.executor,
        ray_port=args.ray_port if args.executor == "ray" and not args.ray_address else None,
        ray_address=args.ray_address,
        ray_node_ports=NodePorts.parse(args.ray_node_ports) if args.ray_node_ports else None,
        num_cpus=args.num_cpus,
        token=args.token or os.environ.get("LATTICE_TOKEN") or None,
        cors_origins=tuple(args.cors_origin or ()),
        allowed_hosts=tuple(args.allowed_host or ()),
        max_workflow_code_bytes=int(args.max_workflow_code_mb * MB),
        body_timeout=args.body_timeout,
        idle_timeout=args.idle_timeout,
        max_finished_runs=args.max_finished_runs,
        max_run_age=args.max_run_age,
        max_attempts=args.max_attempts,
        priority_aging=args.priority_aging,
        join_grace=args.join_grace,
        store=args.store or default_store_spec(data_dir(args)),
        data_dir=str(data_dir(args)),
        sandbox=sandbox,
        metrics_enabled=not args.no_metrics,
        metrics_exporter=args.metrics_exporter,
        metrics_endpoint=args.metrics_endpoint,
    )


def data_dir(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``$LATTICE_DATA_DIR``, else ``~/.lattice``."""
    chosen = args.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().absolute()


def check_port_free(host: str, port: int) -> None:
    """Raise LatticeUsageError naming the port and the flag if ``port`` is taken: one line
    instead of a traceback after the head has opened its store and started its executor."""
    try:
        probe = socket.create_server((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise LatticeUsageError(
            f"port {port} on {host} is in use (another head?); choose another with --port"
        ) from None
    probe.close()


def run_head(settings: ServerSettings) -> int:
    """Serve the API in the foreground until SIGINT/SIGTERM; then shut down cleanly."""
    import uvicorn

    from lattice.api.connection import server_options
    from lattice.api.server import create_app

    check_port_free(settings.host, settings.port)
    app = create_app(settings)
    log.info(
        "Lattice head: store %s (--store, --data-dir or %s move it)", settings.store, DATA_DIR_ENV
    )
    base = f"http://{settings.host}:{settings.port}"
    lines = [
        f"API        {base}",
        f"dashboard  {base}/" + ("?token=<your token>" if settings.token else ""),
        f"docs       {base}/docs",
    ]
    if settings.metrics_enabled and settings.metrics_exporter == "prometheus":
        lines.append(f"metrics    {base}/metrics")
    if settings.executor == "ray" and not settings.ray_address:
        lines.append(
            f"Ray        dashboard at Ray's own port (ray head on port {settings.ray_port})"
        )
    lines += [
        f"executor   {settings.executor}",
        f"store      {settings.store}",
        "stop       Ctrl-C",
    ]
    log.info("Lattice head\n  %s", "\n  ".join(lines))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        # One line per request (and per WebSocket) only when --log-level asks for INFO.
        access_log=logging.getLogger().isEnabledFor(logging.INFO),
        # Open WebSockets get this long to finish before the lifespan ends their runs.
        timeout_graceful_shutdown=3,
        **server_options(settings),
    )
    server = uvicorn.Server(config)
    # The head's threads (event loop, scheduler, Ray's callback threads) hand each task's
    # messages to one another; a woken thread waits for the GIL up to the switch interval
    # (5 ms by default) while another runs Python. A shorter interval cut a decorated
    # LangGraph no-op call from ~5 ms to ~3.5 ms (benchmarks/bench_langgraph.py).
    sys.setswitchinterval(HEAD_SWITCH_INTERVAL)
    # uvicorn shuts down on SIGINT/SIGTERM and then re-raises the signal to the handler that
    # was installed before it ran: Python's defaults would turn a clean shutdown into a
    # KeyboardInterrupt traceback (SIGINT) or a death by signal (SIGTERM). Here the shutdown
    # is the whole answer to the signal; a signal before serving starts also stops it.
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in _STOP_SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1


def _add_head_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("head")
    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other needs --token)",
    )
    g.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"API port (default {DEFAULT_PORT})"
    )
    g.add_argument(
        "--executor", choices=["ray", "local"], default="ray", help="where tasks run (default ray)"
    )
    g.add_argument(
        "--ray-port",
        type=int,
        default=DEFAULT_RAY_PORT,
        help=f"Ray head port workers join (default {DEFAULT_RAY_PORT})",
    )
    g.add_argument(
        "--ray-address", help="join this existing Ray cluster instead of starting a Ray head"
    )
    g.add_argument(
        "--ray-node-ports",
        metavar="LOW-HIGH",
        help="port range for this node's Ray listeners, head or worker (node and object "
        "manager, agents, worker processes; at least 26 ports; default: ports Ray picks)",
    )
    g.add_argument("--num-cpus", type=float, help="CPUs this node offers (default: all cores)")
    g.add_argument(
        "--token",
        help="shared secret every client and worker must present, at least 16 characters; a "
        "worker presents it to its head (or LATTICE_TOKEN)",
    )
    g.add_argument(
        "--cors-origin", action="append", help="allowed browser origin (repeatable; default none)"
    )
    g.add_argument(
        "--allowed-host",
        action="append",
        help="a Host name this head answers to besides its own (repeatable; a head on a "
        "loopback address answers to localhost, 127.0.0.1 and [::1] only)",
    )
    g.add_argument(
        "--max-workflow-code-mb",
        type=float,
        default=DEFAULT_MAX_WORKFLOW_CODE_BYTES / MB,
        help="MB of task code one workflow may hold, all its tasks together (default "
        f"{DEFAULT_MAX_WORKFLOW_CODE_BYTES // MB})",
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help=f"seconds a request body may take to arrive (default {DEFAULT_BODY_TIMEOUT:g})",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help=f"seconds an idle connection stays open (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    g.add_argument(
        "--max-finished-runs",
        type=int,
        default=1000,
        help="finished runs kept for reading (default 1000)",
    )
    g.add_argument(
        "--max-run-age",
        type=float,
        default=DEFAULT_MAX_RUN_AGE,
        metavar="SECONDS",
        help=f"finished runs older than this are retired (default {DEFAULT_MAX_RUN_AGE:.0f}, a week)",
    )
    g.add_argument(
        "--data-dir",
        help=f"where the head keeps its store (default ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR})",
    )
    g.add_argument(
        "--store",
        metavar="memory|sqlite:///PATH",
        help="where workflows and runs are kept (default: SQLite in the data directory; "
        "memory: nothing survives a restart)",
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="dispatches of a task whose node died (default 3)",
    )
    g.add_argument(
        "--priority-aging",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a queued task rises one priority level per SECONDS waited, so idle work never "
        "starves (default 30; 0 turns aging off)",
    )
    g.add_argument(
        "--join-grace",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a node Ray reports may take to register what it offers; tasks only it "
        "might hold wait meanwhile (default 30)",
    )
    s = p.add_argument_group("sandbox")
    s.add_argument(
        "--sandbox",
        default="none",
        choices=[lvl.value for lvl in SandboxLevel],
        help="default isolation level",
    )
    s.add_argument("--task-cpu-time-limit", type=float, help="CPU seconds per sandboxed task")
    s.add_argument("--task-memory-limit", type=int, help="MB of memory per sandboxed task")
    s.add_argument("--docker-image", help="image for --sandbox docker")
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--metrics-exporter",
        default="prometheus",
        choices=["prometheus", "otlp", "otlp_http", "console"],
        help="prometheus serves GET /metrics; otlp/otlp_http push to --metrics-endpoint",
    )
    m.add_argument("--metrics-endpoint", help="OTLP collector URL")
    m.add_argument("--no-metrics", action="store_true", help="collect no metrics")


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("worker")
    g.add_argument("--addr", help="the head's API address HOST:PORT")
    g.add_argument("--num-gpus", type=int, help="GPUs to declare (overrides detection)")
    g.add_argument("--gpu-mem", type=int, help="MB of memory per declared GPU")
    g.add_argument("--memory", type=int, help="MB of memory to declare (overrides detection)")
    g.add_argument("--node-ip", help="this node's address as the head should see it")
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds running tasks get to finish when the worker stops (default 30)",
    )
    g.add_argument(
        "--ray-temp-dir",
        help="where this worker's Ray node keeps sockets and logs (default Ray's /tmp/ray; "
        "workers started at once on one machine each need their own)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lattice", description="Lattice: a task-level distributed runtime."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser(
        "start",
        help="start a head (API server + scheduler) or a worker node",
        description="Start a Lattice head (--head) or a worker that joins one (--worker). Runs in the foreground; "
        "Ctrl-C or SIGTERM stops it cleanly.",
    )
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head node")
    role.add_argument("--worker", action="store_true", help="start a worker node that joins --addr")
    _add_head_args(start)
    _add_worker_args(start)
    status = sub.add_parser(
        "status", help="show the nodes of a running head", description="Print every node of a head."
    )
    status.add_argument("--addr", required=True, help="the head's API address HOST:PORT")
    status.add_argument("--token", help="the head's token (or LATTICE_TOKEN)")
    _add_inspect_commands(sub)
    return parser


def _add_inspect_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--addr", default=f"127.0.0.1:{DEFAULT_PORT}", help="the head's HOST:PORT")
        p.add_argument("--token", help="the head's token (or LATTICE_TOKEN)")
        return p

    runs = command("runs", "list the head's runs, newest first")
    runs.add_argument("--workflow", help="only this workflow's runs")
    runs.add_argument("--status", help="only runs in this state (running, completed, ...)")
    run = command("run", "show one run")
    run.add_argument("action", choices=["show"], help="show: the tasks as a tree")
    run.add_argument("run_id")
    logs = command("logs", "print a run's task logs")
    logs.add_argument("run_id")
    logs.add_argument("task_id", nargs="?")
    logs.add_argument("--follow", action="store_true", help="keep printing while it runs")
    cancel = command("cancel", "cancel a run, or one task of it")
    cancel.add_argument("run_id")
    cancel.add_argument("task_id", nargs="?")
    for name in ("approve", "reject"):
        decide = command(name, f"{name} a barrier that waits in a run")
        decide.add_argument("run_id")
        decide.add_argument("barrier_id")
        decide.add_argument("--comment", default="")
    command("queue", "what waits in the queue, and why")


def _inspect(args: argparse.Namespace) -> int:
    from lattice.cli import inspect

    head = inspect.Head(args.addr, args.token or os.environ.get("LATTICE_TOKEN"))
    if args.command == "runs":
        return inspect.cmd_runs(head, args.workflow, args.status)
    if args.command == "run":
        return inspect.cmd_run_show(head, args.run_id)
    if args.command == "logs":
        return inspect.cmd_logs(head, args.run_id, args.task_id, args.follow)
    if args.command == "cancel":
        return inspect.cmd_cancel(head, args.run_id, args.task_id)
    if args.command in ("approve", "reject"):
        return inspect.cmd_decide(head, args.run_id, args.barrier_id, args.command, args.comment)
    return inspect.cmd_queue(head)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "status":
            from lattice.cli.status import print_status

            return print_status(args.addr, args.token or os.environ.get("LATTICE_TOKEN"))
        if args.command != "start":
            return _inspect(args)
        if args.head:
            return run_head(_head_settings(args))
        from lattice.cli.worker import run_worker

        return run_worker(args)
    except LatticeError as exc:
        print(f"lattice: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
