"""Observability: OpenTelemetry metrics for the engine and the HTTP API.

``Metrics`` owns the pipeline for one server, ``MetricsConfig`` says what it exports,
``MetricsObserver`` records engine events, ``MetricsMiddleware`` records HTTP traffic.
See docs/metrics.md for every metric and how to scrape or push them.
"""

from lattice.observability.instruments import HttpMetrics, MetricsObserver
from lattice.observability.metrics import METRICS_EXPORTERS, Metrics, MetricsConfig
from lattice.observability.middleware import (
    METRICS_STATE_KEY,
    UNMATCHED_ROUTE,
    MetricsMiddleware,
)

__all__ = [
    "METRICS_EXPORTERS",
    "METRICS_STATE_KEY",
    "UNMATCHED_ROUTE",
    "HttpMetrics",
    "Metrics",
    "MetricsConfig",
    "MetricsMiddleware",
    "MetricsObserver",
]
