"""Metrics for one Lattice server: configuration, and the object that owns the pipeline.

``Metrics`` builds its own OpenTelemetry ``MeterProvider`` (never the process-global one, so
two servers in one process, or a test next to a server, keep separate numbers), with one
reader for the configured exporter:

``prometheus``  a pull reader on a private ``prometheus_client`` registry, served by the
                API's ``GET /metrics`` through ``render_prometheus()``
``otlp``        OTLP over gRPC, pushed every ``export_interval_seconds``
``otlp_http``   OTLP over HTTP/protobuf, pushed likewise
``console``     JSON lines on stdout (or a given stream), pushed likewise

The OTLP exporters are imported only when chosen (they pull in grpc and requests).
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from lattice.core.observer import EngineObserver
from lattice.exceptions import LatticeInputError, LatticeUsageError
from lattice.observability.instruments import HttpMetrics, MetricsObserver

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Exporter names accepted by ``MetricsConfig`` (and the CLI's ``--metrics-exporter``).
METRICS_EXPORTERS: tuple[str, ...] = ("prometheus", "otlp", "otlp_http", "console")

#: Exporters that push to ``MetricsConfig.endpoint``.
_ENDPOINT_EXPORTERS = frozenset({"otlp", "otlp_http"})

_OTLP_HTTP_METRICS_PATH = "/v1/metrics"
_METER_NAME = "lattice"


@dataclass(frozen=True)
class MetricsConfig:
    """How a server collects and exports metrics.

    Args:
        enabled: collect at all; when False nothing is recorded and ``/metrics`` is absent.
        exporter: one of ``METRICS_EXPORTERS``.
        endpoint: where ``otlp``/``otlp_http`` push, as an ``http://`` (plaintext) or
            ``https://`` URL. ``None`` leaves it to the OpenTelemetry defaults and
            ``OTEL_EXPORTER_OTLP_*`` variables (``http://localhost:4317`` for gRPC,
            ``http://localhost:4318/v1/metrics`` for HTTP). For ``otlp_http`` a URL without a
            path gets ``/v1/metrics`` appended. Not allowed with the other exporters.
        export_interval_seconds: how often push exporters send; ignored by ``prometheus``,
            which is read when scraped.

    Raises:
        LatticeInputError (a ``ValueError``): an unknown exporter, an endpoint the exporter
            cannot use, or an interval that is not a positive number.
    """

    enabled: bool = True
    exporter: str = "prometheus"
    endpoint: str | None = None
    export_interval_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.exporter not in METRICS_EXPORTERS:
            raise LatticeInputError(
                f"unknown metrics exporter {self.exporter!r}; "
                f"allowed: {', '.join(METRICS_EXPORTERS)}"
            )
        if self.endpoint is not None:
            if self.exporter not in _ENDPOINT_EXPORTERS:
                raise LatticeInputError(
                    f"a metrics endpoint applies only to the otlp and otlp_http exporters, "
                    f"not {self.exporter!r}"
                )
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise LatticeInputError(
                    f"metrics endpoint must be an http:// (plaintext) or https:// URL with a "
                    f"host, e.g. http://localhost:4317; got {self.endpoint!r}"
                )
        interval = self.export_interval_seconds
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise LatticeInputError(
                f"export_interval_seconds must be a positive number, got {interval!r}"
            )

    @property
    def serves_prometheus(self) -> bool:
        """Whether this configuration is scraped through the API's ``GET /metrics``."""
        return self.enabled and self.exporter == "prometheus"


class Metrics:
    """The metrics pipeline of one server: provider, reader, instruments.

    Construct one per server (in the app's lifespan), hand ``observer()`` to the engine and
    this object to ``MetricsMiddleware``, serve ``render_prometheus()`` on ``GET /metrics``
    when ``serves_prometheus`` is true, and call ``shutdown()`` when the server stops.

    Args:
        config: what to collect and where to send it.
        console_out: the stream the ``console`` exporter writes to (default: stdout).

    With ``config.enabled`` False this builds no provider and records nothing; every method
    still works.
    """

    def __init__(self, config: MetricsConfig, *, console_out: TextIO | None = None) -> None:
        self._config = config
        self._scrape_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._registry: CollectorRegistry | None = None
        self._provider: MeterProvider | None = None
        meter: Meter
        if config.enabled:
            reader = self._build_reader(config, console_out)
            # Shut down by us (the lifespan), not by atexit: an atexit hook would keep every
            # provider a test suite builds alive until the interpreter exits.
            self._provider = MeterProvider(
                metric_readers=[reader],
                resource=Resource.create({"service.name": "lattice"}),
                shutdown_on_exit=False,
            )
            meter = self._provider.get_meter(_METER_NAME)
        else:
            meter = NoOpMeter(_METER_NAME)
        self._observer: EngineObserver = (
            MetricsObserver(meter) if config.enabled else EngineObserver()
        )
        self._http = HttpMetrics(meter)

    def _build_reader(self, config: MetricsConfig, console_out: TextIO | None) -> MetricReader:
        if config.exporter == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            # Scope labels (otel_scope_name, ...) would sit on every series and say nothing:
            # all of them come from the one "lattice" meter.
            return PrometheusMetricReader(registry=self._registry, scope_info_enabled=False)
        exporter: MetricExporter
        if config.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcExporter,
            )

            exporter = GrpcExporter(endpoint=config.endpoint)
        elif config.exporter == "otlp_http":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpExporter,
            )

            exporter = HttpExporter(endpoint=_otlp_http_url(config.endpoint))
        else:
            exporter = ConsoleMetricExporter(out=console_out or sys.stdout)
        return PeriodicExportingMetricReader(
            exporter, export_interval_millis=config.export_interval_seconds * 1000
        )

    @property
    def config(self) -> MetricsConfig:
        return self._config

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded."""
        return self._config.enabled

    @property
    def serves_prometheus(self) -> bool:
        """Whether the server should route ``GET /metrics`` here (otherwise answer 404)."""
        return self._config.serves_prometheus

    @property
    def http(self) -> HttpMetrics:
        """The HTTP recorder the middleware uses (records nothing when disabled)."""
        return self._http

    def observer(self) -> EngineObserver:
        """The observer to pass to the engine: a ``MetricsObserver``, or a plain no-op
        ``EngineObserver`` when metrics are disabled. Always the same object."""
        return self._observer

    def render_prometheus(self, accept: str | None = None) -> tuple[bytes, str]:
        """The current metrics in Prometheus exposition format, and its content type.

        Args:
            accept: the scraper's ``Accept`` header; OpenMetrics is returned if it asks for
                it, otherwise the classic text format (``text/plain; version=0.0.4``).

        Raises:
            LatticeUsageError: metrics are disabled or exported some other way
                (check ``serves_prometheus`` first).
        """
        if self._registry is None:
            raise LatticeUsageError(
                "metrics are not served for scraping: "
                + (
                    f"the {self._config.exporter!r} exporter is configured"
                    if self._config.enabled
                    else "metrics are disabled"
                )
            )
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        # One scrape at a time: the OTel collector hands each collection to the scrape that
        # triggered it through a shared queue, which concurrent scrapes would interleave.
        with self._scrape_lock:
            body = encode(self._registry)
        return body, content_type

    def force_flush(self, timeout_seconds: float = 10.0) -> bool:
        """Push everything recorded so far now (push exporters); True if it all went out."""
        if self._provider is None or self._closed:
            return True
        return self._provider.force_flush(timeout_millis=timeout_seconds * 1000)

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        """Export what is left and stop the exporter threads. Safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._provider is not None:
            self._provider.shutdown(timeout_millis=timeout_seconds * 1000)

    def __enter__(self) -> Metrics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def _otlp_http_url(endpoint: str | None) -> str | None:
    """The OTLP/HTTP exporter wants the full signal URL; accept the collector's base URL too."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=_OTLP_HTTP_METRICS_PATH))
    return endpoint
