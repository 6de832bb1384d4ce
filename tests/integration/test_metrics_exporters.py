"""Push exporters against real receivers on loopback: OTLP over gRPC, OTLP over HTTP, console."""

from __future__ import annotations

import gzip
import io
import json
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
    MetricsServiceServicer,
    add_MetricsServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from lattice.core.observer import NodeGauge
from lattice.observability import Metrics, MetricsConfig

Attrs = frozenset[tuple[str, str]]

#: Long enough that only our explicit flush and shutdown export.
NO_PERIODIC_EXPORT = 3600.0


def _attrs(kvs: Any) -> Attrs:
    out: list[tuple[str, str]] = []
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        out.append((kv.key, kv.value.string_value))
    return frozenset(out)


@dataclass
class Received:
    """What a receiver got: the latest value of every (metric, attributes) stream.

    Exports are cumulative, so a later request carries the totals of an earlier one.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    paths: list[str] = field(default_factory=list)
    resource: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    #: metric -> attributes -> value (sums and gauges) or (count, sum) (histograms)
    values: dict[str, dict[Attrs, Any]] = field(default_factory=dict)

    def add(self, request: ExportMetricsServiceRequest, path: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.paths.append(path)
            for rm in request.resource_metrics:
                for kv in rm.resource.attributes:
                    self.resource[kv.key] = kv.value.string_value
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        self.units[metric.name] = metric.unit
                        streams = self.values.setdefault(metric.name, {})
                        kind = metric.WhichOneof("data")
                        if kind in ("sum", "gauge"):
                            for point in getattr(metric, kind).data_points:
                                value = getattr(point, point.WhichOneof("value"))
                                streams[_attrs(point.attributes)] = value
                        elif kind == "histogram":
                            for hp in metric.histogram.data_points:
                                streams[_attrs(hp.attributes)] = (hp.count, hp.sum)


class _Servicer(MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ExportMetricsServiceResponse:
        self._received.add(request)
        return ExportMetricsServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC metrics receiver on a free loopback port: (endpoint URL, received)."""
    received = Received()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    add_MetricsServiceServicer_to_server(_Servicer(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        assert server.stop(grace=None).wait(timeout=10)


def _http_handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/metrics":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            received.add(request, self.path)
            reply = ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            # Keep pytest output to the assertions; requests are checked through `received`.
            return

    return Handler


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP metrics receiver on a free loopback port: (base URL, received)."""
    received = Received()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(received))
    thread = threading.Thread(target=server.serve_forever, name="otlp-http-receiver")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


def _record_some(metrics: Metrics) -> None:
    obs = metrics.observer()
    obs.workflow_created("wf")
    obs.run_started("r1", "wf")
    obs.task_submitted("fetch", "node-a", 0.05)
    obs.task_submitted("fetch", "node-a", 0.15)
    obs.task_completed("fetch", "node-a", 1.25)
    obs.task_failed("fetch", "node-a", 0.75)
    obs.run_finished("r1", "wf", "failed")
    obs.pending_changed(4)
    obs.nodes_changed([NodeGauge("node-a", 1.5, 2048, {0: 2}, alive=True)])
    metrics.http.request_finished("/workflows/{workflow_id}", "GET", 200, 0.004)


def _assert_received(received: Received) -> None:
    v = received.values
    assert received.requests >= 1
    assert received.resource["service.name"] == "lattice"
    assert v["lattice.workflows.created"] == {frozenset(): 1}
    assert v["lattice.runs.started"] == {frozenset(): 1}
    assert v["lattice.runs.finished"] == {frozenset({("outcome", "failed")}): 1}
    fetch_a = frozenset({("task_name", "fetch"), ("node", "node-a")})
    assert v["lattice.tasks.submitted"] == {fetch_a: 2}
    assert v["lattice.tasks.completed"] == {fetch_a: 1}
    assert v["lattice.tasks.failed"] == {fetch_a: 1}
    assert v["lattice.task.queue"] == {frozenset({("task_name", "fetch")}): (2, pytest.approx(0.2))}
    assert v["lattice.task.duration"] == {
        frozenset({("task_name", "fetch"), ("outcome", "completed")}): (1, 1.25),
        frozenset({("task_name", "fetch"), ("outcome", "failed")}): (1, 0.75),
    }
    assert v["lattice.pending_tasks"] == {frozenset(): 4}
    assert v["lattice.node.cpu.available"] == {frozenset({("node", "node-a")}): 1.5}
    assert v["lattice.node.memory.available"] == {frozenset({("node", "node-a")}): 2048}
    assert v["lattice.node.gpu.memory.available"] == {
        frozenset({("node", "node-a"), ("gpu", "0")}): 2 * 1024 * 1024
    }
    assert v["lattice.http.requests"] == {
        frozenset({("route", "/workflows/{workflow_id}"), ("method", "GET"), ("status", "200")}): 1
    }
    assert received.units["lattice.task.duration"] == "s"
    assert received.units["lattice.node.memory.available"] == "By"


def _exporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "OtelPeriodicExportingMetricReader"]


def test_otlp_grpc_exporter_pushes_to_a_real_receiver(
    grpc_receiver: tuple[str, Received],
) -> None:
    endpoint, received = grpc_receiver
    before = len(_exporter_threads())
    metrics = Metrics(
        MetricsConfig(
            exporter="otlp", endpoint=endpoint, export_interval_seconds=NO_PERIODIC_EXPORT
        )
    )
    try:
        assert not metrics.serves_prometheus
        _record_some(metrics)
        assert metrics.force_flush(timeout_seconds=10)
        _assert_received(received)
    finally:
        metrics.shutdown()
    assert len(_exporter_threads()) == before


def test_otlp_http_exporter_pushes_to_a_real_receiver(
    http_receiver: tuple[str, Received],
) -> None:
    base_url, received = http_receiver
    # The collector's base URL is enough: /v1/metrics is appended.
    metrics = Metrics(
        MetricsConfig(
            exporter="otlp_http", endpoint=base_url, export_interval_seconds=NO_PERIODIC_EXPORT
        )
    )
    try:
        _record_some(metrics)
        assert metrics.force_flush(timeout_seconds=10)
        _assert_received(received)
        assert set(received.paths) == {"/v1/metrics"}
    finally:
        metrics.shutdown()


def test_shutdown_pushes_what_was_recorded_since_the_last_flush(
    http_receiver: tuple[str, Received],
) -> None:
    base_url, received = http_receiver
    metrics = Metrics(
        MetricsConfig(
            exporter="otlp_http",
            endpoint=base_url + "/v1/metrics",
            export_interval_seconds=NO_PERIODIC_EXPORT,
        )
    )
    metrics.observer().workflow_created("a")
    assert metrics.force_flush(timeout_seconds=10)
    metrics.observer().workflow_created("b")
    metrics.shutdown()
    metrics.shutdown()
    assert received.values["lattice.workflows.created"] == {frozenset(): 2}


def test_console_exporter_prints_the_metrics() -> None:
    out = io.StringIO()
    metrics = Metrics(
        MetricsConfig(exporter="console", export_interval_seconds=NO_PERIODIC_EXPORT),
        console_out=out,
    )
    metrics.observer().task_completed("fetch", "node-a", 0.5)
    metrics.observer().pending_changed(3)
    metrics.shutdown()

    # One export (at shutdown), written as one JSON document.
    data = json.loads(out.getvalue())
    printed = {
        m["name"]: m
        for rm in data["resource_metrics"]
        for sm in rm["scope_metrics"]
        for m in sm["metrics"]
    }
    assert {"lattice.tasks.completed", "lattice.task.duration", "lattice.pending_tasks"} <= set(
        printed
    )
    (point,) = printed["lattice.tasks.completed"]["data"]["data_points"]
    assert point["attributes"] == {"task_name": "fetch", "node": "node-a"}
    assert point["value"] == 1
    (gauge_point,) = printed["lattice.pending_tasks"]["data"]["data_points"]
    assert gauge_point["value"] == 3
