"""How one ktb process observes itself: metrics, their server, the SDK's metrics, tracing.

Each process (bridge, worker, API) opens one ``Telemetry`` at start-up with
``open_telemetry``: its ``Metrics`` registry, served on ``KTB_METRICS_PORT``
(0: not served), the Temporal SDK's own metrics bridged into that same registry
(so one scrape shows both), and tracing when ``KTB_OTLP_ENDPOINT`` is set. The
Temporal client of the process is built with ``telemetry.runtime`` and
``telemetry.client_interceptors``; its workers add ``telemetry.worker_interceptors``.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import temporalio.client
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    BufferedMetricUpdate,
    LoggingConfig,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from bridge.errors import ConfigError
from bridge.observability.metrics import Metrics
from bridge.observability.tracing import Tracing, setup_tracing
from bridge.settings import Settings

if TYPE_CHECKING:
    import temporalio.worker

log = logging.getLogger("ktb.telemetry")

# The bridge retries and logs transient failures itself; core logs only errors.
QUIET_CORE_LOGS = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
SDK_BUFFER_SIZE = 100_000
SDK_DRAIN_INTERVAL_S = 1.0
SDK_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


TOKIO_WORKER_THREADS = "TOKIO_WORKER_THREADS"
"""How many worker threads the SDK's core runtime (tokio) starts, read as it is built:
the SDK's API takes no count."""
_building = threading.Lock()


def new_runtime(buffer: MetricBuffer | None = None, threads: int | None = None) -> Runtime:
    """A Temporal SDK runtime with quiet core logs, recording its metrics into ``buffer``,
    with ``threads`` worker threads for its calls (``None``: tokio's default, one per
    core). The process's environment is as before once it is built."""
    if threads is not None and threads < 1:
        raise ValueError(f"a runtime needs at least one thread, not {threads}")
    with _building:
        before = os.environ.get(TOKIO_WORKER_THREADS)
        if threads is not None:
            os.environ[TOKIO_WORKER_THREADS] = str(threads)
        try:
            return Runtime(
                telemetry=TelemetryConfig(
                    logging=QUIET_CORE_LOGS, metrics=buffer, attach_service_name=False
                )
            )
        finally:
            if before is None:
                os.environ.pop(TOKIO_WORKER_THREADS, None)
            else:
                os.environ[TOKIO_WORKER_THREADS] = before


def shared_runtime(threads: int | None = None) -> Runtime:
    """The runtime of processes that do not export the SDK's metrics: one per process and
    thread count (``new_runtime``)."""
    return _shared_runtime(threads)


@functools.cache
def _shared_runtime(threads: int | None) -> Runtime:
    return new_runtime(threads=threads)


# --- the Temporal SDK's metrics in a Prometheus registry -------------------------------


@dataclass
class _Series:
    value: float = 0.0
    buckets: list[int] = field(default_factory=list)
    count: int = 0


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    series: dict[tuple[tuple[str, str], ...], _Series] = field(default_factory=dict)


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SdkMetrics:
    """A Prometheus collector for the metrics the Temporal SDK records into a ``MetricBuffer``.

    Counters are exposed with ``_total``, durations in seconds with ``_seconds``
    (``temporal_request_latency`` becomes ``temporal_request_latency_seconds``).
    The buffer is drained on every scrape and by a background thread between
    scrapes, so it never fills up.
    """

    def __init__(self, buckets: Sequence[float] = SDK_LATENCY_BUCKETS) -> None:
        self.buffer = MetricBuffer(SDK_BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
        self.bounds = tuple(buckets)
        self._families: dict[int, _Family] = {}
        self._labels: dict[int, tuple[Any, tuple[tuple[str, str], ...]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Drain the buffer every second until ``stop``."""
        self._thread = threading.Thread(
            target=self._drain_loop, name="ktb-sdk-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the background drain."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _drain_loop(self) -> None:
        while not self._stop.wait(SDK_DRAIN_INTERVAL_S):
            self.drain()

    def drain(self) -> None:
        """Apply the updates recorded since the last drain."""
        with self._lock:
            self.apply(self.buffer.retrieve_updates())

    def apply(self, updates: Iterable[BufferedMetricUpdate]) -> None:
        """Fold updates into the exposed values (counters add, gauges set, histograms observe)."""
        for update in updates:
            metric = update.metric
            family = self._families.get(id(metric))
            if family is None:
                family = self._families[id(metric)] = self._family(metric)
            series = family.series.get(self._label_key(update.attributes))
            if series is None:
                series = family.series[self._label_key(update.attributes)] = _Series(
                    buckets=[0] * len(self.bounds) if family.kind == "histogram" else []
                )
            value = float(update.value)
            if family.kind == "counter":
                series.value += value
            elif family.kind == "gauge":
                series.value = value
            else:
                series.value += value
                series.count += 1
                bucket = bisect.bisect_left(self.bounds, value)  # the first bound >= value
                if bucket < len(self.bounds):
                    series.buckets[bucket] += 1

    def _family(self, metric: Any) -> _Family:
        if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
            kind = "counter"
        elif metric.kind == BUFFERED_METRIC_KIND_GAUGE:
            kind = "gauge"
        else:
            kind = "histogram"
        name = metric.name
        if kind == "counter":
            name = name.removesuffix("_total")  # exposed with the suffix, not twice
        suffix = UNIT_SUFFIXES.get(metric.unit or "")
        if suffix and not name.endswith("_" + suffix):
            name = f"{name}_{suffix}"
        return _Family(name, kind, metric.description or metric.name)

    def _label_key(self, attributes: Any) -> tuple[tuple[str, str], ...]:
        # The SDK hands out the same attributes object for the same set; it is kept
        # referenced here so that its id cannot be reused by another object.
        cached = self._labels.get(id(attributes))
        if cached is not None and cached[0] is attributes:
            return cached[1]
        key = tuple(sorted((str(k), _label_value(v)) for k, v in attributes.items()))
        self._labels[id(attributes)] = (attributes, key)
        return key

    def describe(self) -> list[Metric]:
        """Nothing up front: the SDK's metric names are known only once recorded."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The SDK's metrics as Prometheus families (drains the buffer first)."""
        self.drain()
        yield from self.families()

    def families(self) -> list[Metric]:
        """The values folded in so far, as Prometheus families."""
        with self._lock:
            return [self._render(f) for f in self._families.values() if f.series]

    def _render(self, family: _Family) -> Metric:
        out = Metric(family.name, family.help, family.kind)
        for key, series in family.series.items():
            labels = dict(key)
            if family.kind == "counter":
                out.add_sample(family.name + "_total", labels, series.value)
            elif family.kind == "gauge":
                out.add_sample(family.name, labels, series.value)
            else:
                cumulative = 0
                for bound, hits in zip(self.bounds, series.buckets, strict=True):
                    cumulative += hits
                    le = {**labels, "le": floatToGoString(bound)}
                    out.add_sample(family.name + "_bucket", le, cumulative)
                inf = {**labels, "le": "+Inf"}
                out.add_sample(family.name + "_bucket", inf, series.count)
                out.add_sample(family.name + "_count", labels, series.count)
                out.add_sample(family.name + "_sum", labels, series.value)
        return out


# --- the /metrics server --------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` of one registry over HTTP, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                "set KTB_METRICS_PORT to a free port, or 0 to turn the server off"
            ) from exc
        self.host = host
        self.port = int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Where Prometheus scrapes this process."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# --- one process's telemetry ------------------------------------------------------------------


@dataclass
class Telemetry:
    """The metrics, Temporal runtime, tracing and ``/metrics`` server of one process."""

    process: str
    metrics: Metrics
    runtime: Runtime
    tracing: Tracing | None = None
    sdk: SdkMetrics | None = None
    server: MetricsServer | None = None
    _collectors: list[Any] = field(default_factory=list)

    @property
    def tracer(self) -> Tracer | None:
        """The tracer when tracing is on; ``None`` keeps the hot path free of spans."""
        return self.tracing.tracer if self.tracing is not None else None

    @property
    def client_interceptors(self) -> list[temporalio.client.Interceptor]:
        """For the process's Temporal client; workers built on the client inherit them."""
        return [self.tracing.interceptor] if self.tracing is not None else []

    def worker_interceptors(self) -> list[temporalio.worker.Interceptor]:
        """For every worker of the process: workflow and activity metrics."""
        from bridge.observability.worker_metrics import WorkerMetrics

        return [WorkerMetrics(self.metrics)]

    @property
    def metrics_url(self) -> str | None:
        """Where ``/metrics`` is served, if it is."""
        return self.server.url if self.server is not None else None

    def close(self) -> None:
        """Stop the server and the SDK drain, flush spans, unregister what was added."""
        if self.server is not None:
            self.server.close()
        if self.sdk is not None:
            self.sdk.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        for collector in self._collectors:
            self.metrics.registry.unregister(collector)


@contextlib.contextmanager
def open_telemetry(
    settings: Settings,
    process: str,
    metrics: Metrics | None = None,
    *,
    sdk_metrics: bool | None = None,
    span_exporter: SpanExporter | None = None,
    runtime_threads: int | None = None,
) -> Iterator[Telemetry]:
    """Telemetry of the process named ``process`` (``bridge``, ``worker-orders``, ``api``).

    The SDK's metrics join the registry when it is served (``KTB_METRICS_PORT``) or
    ``sdk_metrics`` asks for them (the API serves its registry on its own port).
    Tracing is on when ``KTB_OTLP_ENDPOINT`` or ``span_exporter`` is set. The SDK's
    runtime has ``KTB_TEMPORAL_RUNTIME_THREADS`` worker threads, else the process's own
    ``runtime_threads``, else tokio's default.
    """
    metrics = metrics or Metrics()
    serve = settings.metrics_port > 0
    threads = settings.temporal_runtime_threads or runtime_threads
    # One runtime per process: its own when it records the SDK's metrics, else the shared one.
    sdk = SdkMetrics() if (sdk_metrics if sdk_metrics is not None else serve) else None
    runtime = shared_runtime(threads) if sdk is None else new_runtime(sdk.buffer, threads)
    telemetry = Telemetry(process, metrics, runtime)
    try:
        if sdk is not None:
            metrics.registry.register(sdk)
            telemetry._collectors.append(sdk)
            telemetry.sdk = sdk
            sdk.start()
        if serve:
            telemetry._collectors.append(ProcessCollector(registry=metrics.registry))
            telemetry.server = MetricsServer(
                metrics.registry, settings.metrics_host, settings.metrics_port
            )
            log.info("%s serves metrics on %s", process, telemetry.server.url)
        telemetry.tracing = setup_tracing(settings, f"ktb-{process}", span_exporter)
        yield telemetry
    finally:
        telemetry.close()
