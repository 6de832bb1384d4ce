"""The instruments Lattice records, and the two recorders that feed them.

``MetricsObserver`` turns engine events (``lattice.core.observer.EngineObserver`` hooks) into
measurements; ``HttpMetrics`` is what the ASGI middleware records into. Both take an
OpenTelemetry ``Meter`` and work the same whether it belongs to an SDK ``MeterProvider``
(metrics on) or is a no-op meter.

Instrument names follow OpenTelemetry conventions (dotted, unit kept apart); a Prometheus
exporter (ours, or an OpenTelemetry Collector's) turns ``lattice.tasks.submitted`` into
``lattice_tasks_submitted_total`` and ``lattice.task.duration`` with unit ``s`` into
``lattice_task_duration_seconds``. Annotation units such as ``{task}`` add no suffix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from lattice.core.observer import EngineObserver, NodeGauge
from lattice.vocabulary import MB

#: Task queue and run times: from 1 ms (a trivial function) up to half an hour (a long LLM job).
TASK_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)

#: HTTP handlers answer in milliseconds; a long tail up to 10 s is an incident, not a bucket.
HTTP_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Label value used when an event has no node (a task cancelled in the queue, or one that
#: could not be placed). Prometheus treats an empty label as a missing one, which would make
#: such series hard to select.
NO_NODE = "none"


def _node_label(node_id: str) -> str:
    return node_id or NO_NODE


class MetricsObserver(EngineObserver):
    """Records engine events as OpenTelemetry measurements.

    Counters and histograms are recorded as the hooks are called. The pending-task count and
    the per-node free resources are kept here (the latest values only, under a lock, since
    task hooks run on the scheduler thread) and read by observable gauges whenever a reader
    collects. Nodes reported with ``alive=False`` are left out, so their series go stale.
    """

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._nodes: tuple[NodeGauge, ...] = ()

        self._workflows_created = meter.create_counter(
            "lattice.workflows.created", unit="{workflow}", description="Workflows created."
        )
        self._runs_started = meter.create_counter(
            "lattice.runs.started", unit="{run}", description="Workflow runs started."
        )
        self._runs_finished = meter.create_counter(
            "lattice.runs.finished",
            unit="{run}",
            description="Workflow runs finished, by outcome (completed, failed, cancelled).",
        )
        self._tasks_submitted = meter.create_counter(
            "lattice.tasks.submitted",
            unit="{task}",
            description="Tasks that left the queue for a node.",
        )
        self._tasks_completed = meter.create_counter(
            "lattice.tasks.completed", unit="{task}", description="Tasks that finished."
        )
        self._tasks_failed = meter.create_counter(
            "lattice.tasks.failed",
            unit="{task}",
            description="Tasks that raised or could not be placed (node=none).",
        )
        self._tasks_cancelled = meter.create_counter(
            "lattice.tasks.cancelled",
            unit="{task}",
            description="Tasks cancelled while queued (node=none) or running.",
        )
        self._queue_seconds = meter.create_histogram(
            "lattice.task.queue",
            unit="s",
            description="Time a task waited for resources before it was submitted.",
            explicit_bucket_boundaries_advisory=TASK_SECONDS_BUCKETS,
        )
        self._duration_seconds = meter.create_histogram(
            "lattice.task.duration",
            unit="s",
            description="Time a task ran on its node, by outcome (completed, failed).",
            explicit_bucket_boundaries_advisory=TASK_SECONDS_BUCKETS,
        )
        meter.create_observable_gauge(
            "lattice.pending_tasks",
            callbacks=[self._observe_pending],
            unit="{task}",
            description="Tasks waiting for resources.",
        )
        meter.create_observable_gauge(
            "lattice.node.cpu.available",
            callbacks=[self._observe_cpu],
            unit="{cpu}",
            description="CPUs free on a node (fractional).",
        )
        meter.create_observable_gauge(
            "lattice.node.memory.available",
            callbacks=[self._observe_memory],
            unit="By",
            description="Memory free on a node.",
        )
        meter.create_observable_gauge(
            "lattice.node.gpu.memory.available",
            callbacks=[self._observe_gpu_memory],
            unit="By",
            description="Memory free on one GPU of a node.",
        )

    # --- engine hooks ---------------------------------------------------------------------

    def workflow_created(self, workflow_id: str) -> None:
        self._workflows_created.add(1)

    def run_started(self, run_id: str, workflow_id: str) -> None:
        self._runs_started.add(1)

    def run_finished(self, run_id: str, workflow_id: str, outcome: str) -> None:
        self._runs_finished.add(1, {"outcome": outcome})

    def task_submitted(self, task_name: str, node_id: str, queued_seconds: float) -> None:
        self._tasks_submitted.add(1, {"task_name": task_name, "node": _node_label(node_id)})
        self._queue_seconds.record(queued_seconds, {"task_name": task_name})

    def task_completed(self, task_name: str, node_id: str, duration_seconds: float) -> None:
        self._tasks_completed.add(1, {"task_name": task_name, "node": _node_label(node_id)})
        self._duration_seconds.record(
            duration_seconds, {"task_name": task_name, "outcome": "completed"}
        )

    def task_failed(self, task_name: str, node_id: str, duration_seconds: float) -> None:
        self._tasks_failed.add(1, {"task_name": task_name, "node": _node_label(node_id)})
        # Without a node the task never ran; a zero would drag the duration quantiles down.
        if node_id:
            self._duration_seconds.record(
                duration_seconds, {"task_name": task_name, "outcome": "failed"}
            )

    def task_cancelled(self, task_name: str, node_id: str) -> None:
        self._tasks_cancelled.add(1, {"task_name": task_name, "node": _node_label(node_id)})

    def pending_changed(self, pending: int) -> None:
        with self._lock:
            self._pending = pending

    def nodes_changed(self, nodes: Sequence[NodeGauge]) -> None:
        alive = tuple(node for node in nodes if node.alive)
        with self._lock:
            self._nodes = alive

    # --- gauge callbacks (run on whichever thread collects) -------------------------------

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            pending = self._pending
        return [Observation(pending)]

    def _snapshot_nodes(self) -> tuple[NodeGauge, ...]:
        with self._lock:
            return self._nodes

    def _observe_cpu(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(node.cpu_available, {"node": node.node_id})
            for node in self._snapshot_nodes()
        ]

    def _observe_memory(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(node.memory_available_bytes, {"node": node.node_id})
            for node in self._snapshot_nodes()
        ]

    def _observe_gpu_memory(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(free_mb * MB, {"node": node.node_id, "gpu": str(gpu_id)})
            for node in self._snapshot_nodes()
            for gpu_id, free_mb in sorted(node.gpu_memory_available_mb.items())
        ]


#: HTTP methods kept as label values; anything else is counted as ``OTHER`` so a client
#: sending made-up methods cannot create unbounded series.
KNOWN_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class HttpMetrics:
    """What the HTTP middleware records: requests by route template, and open WebSockets."""

    def __init__(self, meter: Meter) -> None:
        self._requests = meter.create_counter(
            "lattice.http.requests",
            unit="{request}",
            description="HTTP requests answered, by route template, method and status.",
        )
        self._duration = meter.create_histogram(
            "lattice.http.request.duration",
            unit="s",
            description="Time from request to the end of the response, by route and method.",
            explicit_bucket_boundaries_advisory=HTTP_SECONDS_BUCKETS,
        )
        self._websockets = meter.create_up_down_counter(
            "lattice.websocket.connections",
            unit="{connection}",
            description="WebSocket connections open now, by route template.",
        )

    def request_finished(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one answered HTTP request.

        Args:
            route: the route template (``/get_workflow_tasks/{workflow_id}``), never the raw
                path, so ids do not become label values.
            method: the request method; unknown methods are recorded as ``OTHER``.
            status: the response status code.
            seconds: time from the request to the end of the response.
        """
        method = method.upper()
        if method not in KNOWN_HTTP_METHODS:
            method = "OTHER"
        self._requests.add(1, {"route": route, "method": method, "status": str(status)})
        self._duration.record(seconds, {"route": route, "method": method})

    def websocket_opened(self, route: str) -> None:
        """A WebSocket on ``route`` (a template) was accepted."""
        self._websockets.add(1, {"route": route})

    def websocket_closed(self, route: str) -> None:
        """A WebSocket opened on ``route`` ended; call once per ``websocket_opened``."""
        self._websockets.add(-1, {"route": route})
