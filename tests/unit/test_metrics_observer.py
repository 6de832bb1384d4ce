"""MetricsObserver and Metrics, driven through the engine hooks and read back by scraping."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client.parser import text_string_to_metric_families

from lattice.core.observer import EngineObserver, NodeGauge
from lattice.exceptions import LatticeUsageError
from lattice.observability import (
    METRICS_EXPORTERS,
    Metrics,
    MetricsConfig,
    MetricsObserver,
)

MiB = 1024 * 1024

Labels = frozenset[tuple[str, str]]


def scrape(metrics: Metrics) -> dict[str, dict[Labels, float]]:
    """Sample name -> {label set -> value}, parsed from the Prometheus text exposition."""
    body, content_type = metrics.render_prometheus()
    assert content_type.startswith("text/plain")
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def family_types(metrics: Metrics) -> dict[str, str]:
    body, _ = metrics.render_prometheus()
    return {f.name: f.type for f in text_string_to_metric_families(body.decode())}


def labels(**kv: str) -> Labels:
    return frozenset(kv.items())


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(MetricsConfig(exporter="prometheus"))
    yield m
    m.shutdown()


@pytest.fixture
def observer(metrics: Metrics) -> MetricsObserver:
    obs = metrics.observer()
    assert isinstance(obs, MetricsObserver)
    return obs


def drive_a_run(obs: EngineObserver) -> None:
    """The hook sequence the engine produces for one small run on two nodes."""
    obs.workflow_created("wf-1")
    obs.run_started("run-1", "wf-1")
    obs.task_submitted("fetch", "node-a", 0.0004)
    obs.task_submitted("fetch", "node-b", 0.02)
    obs.task_submitted("summarise", "node-a", 3.0)
    obs.task_completed("fetch", "node-a", 0.2)
    obs.task_completed("fetch", "node-b", 45.0)
    obs.task_failed("summarise", "node-a", 1.5)
    obs.task_failed("embed", "", 0.0)  # could not be placed anywhere
    obs.task_cancelled("rank", "")  # cancelled while queued
    obs.run_finished("run-1", "wf-1", "failed")
    obs.run_started("run-2", "wf-1")
    obs.run_finished("run-2", "wf-1", "completed")


def test_prometheus_names_and_types_are_exactly_the_documented_ones(
    metrics: Metrics, observer: MetricsObserver
) -> None:
    drive_a_run(observer)
    observer.pending_changed(1)
    observer.nodes_changed([NodeGauge("node-a", 2.0, 4 * MiB, {0: 100}, alive=True)])
    metrics.http.request_finished("/x", "GET", 200, 0.01)
    metrics.http.websocket_opened("/ws")

    types = family_types(metrics)
    # prometheus_client reports counter families without their ``_total`` suffix.
    expected = {
        "lattice_workflows_created": "counter",
        "lattice_runs_started": "counter",
        "lattice_runs_finished": "counter",
        "lattice_tasks_submitted": "counter",
        "lattice_tasks_completed": "counter",
        "lattice_tasks_failed": "counter",
        "lattice_tasks_cancelled": "counter",
        "lattice_task_queue_seconds": "histogram",
        "lattice_task_duration_seconds": "histogram",
        "lattice_pending_tasks": "gauge",
        "lattice_node_cpu_available": "gauge",
        "lattice_node_memory_available_bytes": "gauge",
        "lattice_node_gpu_memory_available_bytes": "gauge",
        "lattice_http_requests": "counter",
        "lattice_http_request_duration_seconds": "histogram",
        "lattice_websocket_connections": "gauge",
    }
    lattice_types = {k: v for k, v in types.items() if k.startswith("lattice_")}
    assert lattice_types == expected

    samples = scrape(metrics)
    for counter in (n for n, t in expected.items() if t == "counter"):
        assert f"{counter}_total" in samples
    assert "lattice_task_duration_seconds_bucket" in samples


def test_counters_count_each_hook_with_its_labels(
    metrics: Metrics, observer: MetricsObserver
) -> None:
    drive_a_run(observer)
    s = scrape(metrics)

    assert s["lattice_workflows_created_total"] == {labels(): 1.0}
    assert s["lattice_runs_started_total"] == {labels(): 2.0}
    assert s["lattice_runs_finished_total"] == {
        labels(outcome="failed"): 1.0,
        labels(outcome="completed"): 1.0,
    }
    assert s["lattice_tasks_submitted_total"] == {
        labels(task_name="fetch", node="node-a"): 1.0,
        labels(task_name="fetch", node="node-b"): 1.0,
        labels(task_name="summarise", node="node-a"): 1.0,
    }
    assert s["lattice_tasks_completed_total"] == {
        labels(task_name="fetch", node="node-a"): 1.0,
        labels(task_name="fetch", node="node-b"): 1.0,
    }
    assert s["lattice_tasks_failed_total"] == {
        labels(task_name="summarise", node="node-a"): 1.0,
        labels(task_name="embed", node="none"): 1.0,
    }
    assert s["lattice_tasks_cancelled_total"] == {labels(task_name="rank", node="none"): 1.0}


def test_histograms_bucket_queue_and_run_times(metrics: Metrics, observer: MetricsObserver) -> None:
    drive_a_run(observer)
    s = scrape(metrics)

    queue_count = s["lattice_task_queue_seconds_count"]
    assert queue_count == {labels(task_name="fetch"): 2.0, labels(task_name="summarise"): 1.0}
    assert s["lattice_task_queue_seconds_sum"][labels(task_name="summarise")] == 3.0
    fetch_queue = {
        dict(k)["le"]: v
        for k, v in s["lattice_task_queue_seconds_bucket"].items()
        if dict(k)["task_name"] == "fetch"
    }
    # 0.4 ms lands in the first (1 ms) bucket, 20 ms by 25 ms; buckets reach half an hour.
    assert fetch_queue["0.001"] == 1.0
    assert fetch_queue["0.01"] == 1.0
    assert fetch_queue["0.025"] == 2.0
    assert fetch_queue["1800.0"] == 2.0
    assert fetch_queue["+Inf"] == 2.0

    # A task that never reached a node has no run time; the failed one that ran does.
    assert s["lattice_task_duration_seconds_count"] == {
        labels(task_name="fetch", outcome="completed"): 2.0,
        labels(task_name="summarise", outcome="failed"): 1.0,
    }
    fetch_run = {
        dict(k)["le"]: v
        for k, v in s["lattice_task_duration_seconds_bucket"].items()
        if dict(k)["task_name"] == "fetch"
    }
    assert fetch_run["0.1"] == 0.0
    assert fetch_run["0.25"] == 1.0
    assert fetch_run["30.0"] == 1.0
    assert fetch_run["60.0"] == 2.0
    assert s["lattice_task_duration_seconds_sum"][
        labels(task_name="fetch", outcome="completed")
    ] == pytest.approx(45.2)


def test_gauges_report_the_latest_values(metrics: Metrics, observer: MetricsObserver) -> None:
    observer.pending_changed(7)
    observer.pending_changed(2)
    observer.nodes_changed(
        [
            NodeGauge("head", 3.5, 8 * MiB, {}, alive=True),
            NodeGauge("gpu-1", 0.25, 2 * MiB, {0: 1024, 1: 0}, alive=True),
        ]
    )
    s = scrape(metrics)
    assert s["lattice_pending_tasks"] == {labels(): 2.0}
    assert s["lattice_node_cpu_available"] == {labels(node="head"): 3.5, labels(node="gpu-1"): 0.25}
    assert s["lattice_node_memory_available_bytes"] == {
        labels(node="head"): float(8 * MiB),
        labels(node="gpu-1"): float(2 * MiB),
    }
    assert s["lattice_node_gpu_memory_available_bytes"] == {
        labels(node="gpu-1", gpu="0"): float(1024 * MiB),
        labels(node="gpu-1", gpu="1"): 0.0,
    }

    # A later report replaces the earlier one; a dead node's series disappear.
    observer.nodes_changed(
        [
            NodeGauge("head", 1.0, 4 * MiB, {}, alive=True),
            NodeGauge("gpu-1", 0.25, 2 * MiB, {0: 1024}, alive=False),
        ]
    )
    s = scrape(metrics)
    assert s["lattice_node_cpu_available"] == {labels(node="head"): 1.0}
    assert s["lattice_node_memory_available_bytes"] == {labels(node="head"): float(4 * MiB)}
    assert s.get("lattice_node_gpu_memory_available_bytes", {}) == {}


def test_hooks_from_many_threads_lose_nothing(metrics: Metrics, observer: MetricsObserver) -> None:
    threads_n, per_thread = 8, 500
    start = threading.Barrier(threads_n)

    def work(i: int) -> None:
        start.wait(timeout=10)
        for j in range(per_thread):
            observer.task_completed("t", f"node-{i % 2}", 0.001)
            observer.pending_changed(j)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()

    s = scrape(metrics)
    half = threads_n // 2 * per_thread
    assert s["lattice_tasks_completed_total"] == {
        labels(task_name="t", node="node-0"): float(half),
        labels(task_name="t", node="node-1"): float(half),
    }
    assert s["lattice_pending_tasks"] == {labels(): float(per_thread - 1)}


def test_http_recorder_uses_templates_and_folds_unknown_methods(metrics: Metrics) -> None:
    metrics.http.request_finished("/items/{item_id}", "get", 200, 0.003)
    metrics.http.request_finished("/items/{item_id}", "GET", 404, 0.002)
    metrics.http.request_finished("unmatched", "BREW", 405, 0.001)
    metrics.http.websocket_opened("/ws/{room}")
    metrics.http.websocket_opened("/ws/{room}")
    metrics.http.websocket_closed("/ws/{room}")
    s = scrape(metrics)
    assert s["lattice_http_requests_total"] == {
        labels(route="/items/{item_id}", method="GET", status="200"): 1.0,
        labels(route="/items/{item_id}", method="GET", status="404"): 1.0,
        labels(route="unmatched", method="OTHER", status="405"): 1.0,
    }
    assert s["lattice_http_request_duration_seconds_count"] == {
        labels(route="/items/{item_id}", method="GET"): 2.0,
        labels(route="unmatched", method="OTHER"): 1.0,
    }
    assert s["lattice_websocket_connections"] == {labels(route="/ws/{room}"): 1.0}


def test_each_metrics_object_is_its_own_pipeline(
    metrics: Metrics, observer: MetricsObserver
) -> None:
    other = Metrics(MetricsConfig())
    try:
        observer.workflow_created("wf")
        assert scrape(metrics)["lattice_workflows_created_total"] == {labels(): 1.0}
        assert "lattice_workflows_created_total" not in scrape(other)
    finally:
        other.shutdown()
    # Nothing leaked into the process-wide defaults.
    assert not isinstance(otel_metrics.get_meter_provider(), MeterProvider)
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "lattice_" not in global_text


def test_openmetrics_is_served_when_asked_for(metrics: Metrics, observer: MetricsObserver) -> None:
    observer.workflow_created("wf")
    body, content_type = metrics.render_prometheus("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert b"lattice_workflows_created_total 1.0" in body
    assert body.endswith(b"# EOF\n")


def test_shutdown_is_idempotent(metrics: Metrics) -> None:
    metrics.shutdown()
    metrics.shutdown()
    assert metrics.force_flush() is True


def test_disabled_metrics_record_nothing_and_serve_nothing() -> None:
    with Metrics(MetricsConfig(enabled=False)) as m:
        assert not m.enabled
        assert not m.serves_prometheus
        assert type(m.observer()) is EngineObserver
        m.observer().task_completed("t", "n", 1.0)
        m.http.request_finished("/x", "GET", 200, 0.1)
        m.http.websocket_opened("/ws")
        with pytest.raises(LatticeUsageError, match="disabled"):
            m.render_prometheus()


def test_config_names_an_unknown_exporter_and_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as info:
        MetricsConfig(exporter="statsd")
    message = str(info.value)
    assert "'statsd'" in message
    for name in METRICS_EXPORTERS:
        assert name in message
    assert set(METRICS_EXPORTERS) == {"prometheus", "otlp", "otlp_http", "console"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"exporter": "prometheus", "endpoint": "http://localhost:4317"}, "only to the otlp"),
        ({"exporter": "console", "endpoint": "http://localhost:4317"}, "only to the otlp"),
        ({"exporter": "otlp", "endpoint": "localhost:4317"}, "http:// (plaintext) or https://"),
        ({"exporter": "otlp_http", "endpoint": "ftp://collector/v1"}, "https:// URL"),
        ({"export_interval_seconds": 0}, "positive number"),
        ({"export_interval_seconds": float("nan")}, "positive number"),
    ],
)
def test_config_rejects_settings_it_cannot_honour(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        MetricsConfig(**kwargs)


def test_config_accepts_otlp_endpoints_and_knows_who_serves_metrics() -> None:
    assert MetricsConfig().serves_prometheus
    assert not MetricsConfig(enabled=False).serves_prometheus
    grpc = MetricsConfig(exporter="otlp", endpoint="https://collector:4317")
    assert not grpc.serves_prometheus
    assert MetricsConfig(exporter="otlp_http", endpoint="http://collector:4318").endpoint
