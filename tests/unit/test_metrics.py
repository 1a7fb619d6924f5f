"""The metrics container, the Temporal SDK metrics bridge, the /metrics server, tracing helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    BUFFERED_METRIC_KIND_HISTOGRAM,
    Runtime,
)

from bridge import wiring
from bridge.dev.stack import free_port
from bridge.dispatch import Outcome, Result
from bridge.errors import ConfigError
from bridge.observability import telemetry as telemetry_module
from bridge.observability import tracing
from bridge.observability.metrics import DURATION_BUCKETS, Metrics
from bridge.observability.telemetry import (
    TOKIO_WORKER_THREADS,
    SdkMetrics,
    new_runtime,
    open_telemetry,
    shared_runtime,
)
from bridge.observability.worker_metrics import WorkerMetrics
from bridge.settings import REPO_ROOT, Settings


@dataclass(frozen=True)
class FakeMetric:
    name: str
    kind: int
    unit: str | None = None
    description: str | None = "a metric"


@dataclass
class FakeUpdate:
    metric: FakeMetric
    value: float
    attributes: dict[str, Any] = field(default_factory=dict)


def samples(registry: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sdk_counters_add_gauges_set_histograms_bucket():
    sdk = SdkMetrics(buckets=(0.1, 1.0))
    requests = FakeMetric("temporal_request", BUFFERED_METRIC_KIND_COUNTER)
    slots = FakeMetric("temporal_worker_task_slots_available", BUFFERED_METRIC_KIND_GAUGE)
    latency = FakeMetric("temporal_request_latency", BUFFERED_METRIC_KIND_HISTOGRAM, "s")
    start = {"operation": "StartWorkflowExecution", "namespace": "default"}
    eager = {"eager": True}
    sdk.apply(
        [
            FakeUpdate(requests, 1, start),
            FakeUpdate(requests, 2, start),
            FakeUpdate(requests, 1, eager),
            FakeUpdate(slots, 100),
            FakeUpdate(slots, 97),
            FakeUpdate(latency, 0.05, start),
            FakeUpdate(latency, 0.5, start),
            FakeUpdate(latency, 7.0, start),
        ]
    )
    out = {
        (s.name, frozenset(s.labels.items())): s.value for m in sdk.families() for s in m.samples
    }
    labels = frozenset(start.items())
    assert out[("temporal_request_total", labels)] == 3
    assert out[("temporal_request_total", frozenset({("eager", "true")}))] == 1
    assert out[("temporal_worker_task_slots_available", frozenset())] == 97
    bucket = "temporal_request_latency_seconds_bucket"
    assert out[(bucket, labels | {("le", "0.1")})] == 1
    assert out[(bucket, labels | {("le", "1.0")})] == 2
    assert out[(bucket, labels | {("le", "+Inf")})] == 3
    assert out[("temporal_request_latency_seconds_count", labels)] == 3
    assert out[("temporal_request_latency_seconds_sum", labels)] == pytest.approx(7.55)


def test_sdk_counter_already_named_total_is_not_suffixed_twice():
    sdk = SdkMetrics()
    total = FakeMetric("temporal_local_activity_total", BUFFERED_METRIC_KIND_COUNTER)
    sdk.apply([FakeUpdate(total, 2)])
    names = {s.name for m in sdk.families() for s in m.samples}
    assert names == {"temporal_local_activity_total"}


def test_worker_metrics_count_runs_with_the_founding_buckets():
    metrics = Metrics()
    interceptor = WorkerMetrics(metrics)
    interceptor.workflow_finished("OrderFulfillment", "completed", 12.0)
    interceptor.workflow_finished("OrderFulfillment", "failed", 700.0)
    got = samples(metrics.registry)
    order = ("workflow_type", "OrderFulfillment")
    assert got[("workflow_executions_total", frozenset({order, ("status", "completed")}))] == 1
    assert got[("workflow_executions_total", frozenset({order, ("status", "failed")}))] == 1
    assert DURATION_BUCKETS == (1, 5, 10, 30, 60, 300, 600)
    bucket = "workflow_duration_seconds_bucket"
    assert got[(bucket, frozenset({order, ("le", "10.0")}))] == 0
    assert got[(bucket, frozenset({order, ("le", "30.0")}))] == 1
    assert got[(bucket, frozenset({order, ("le", "600.0")}))] == 1
    assert got[(bucket, frozenset({order, ("le", "+Inf")}))] == 2


def test_metrics_off_means_no_server_and_the_shared_runtime():
    with open_telemetry(Settings(metrics_port=0), "bridge") as telemetry:
        assert telemetry.server is None and telemetry.metrics_url is None
        assert telemetry.sdk is None
        assert telemetry.runtime is shared_runtime()
        assert telemetry.tracing is None and telemetry.tracer is None
        assert telemetry.client_interceptors == []


RUNTIMES_IN_A_FRESH_PROCESS = """
import json, os, sys, time
from pathlib import Path
from bridge.observability.telemetry import TOKIO_WORKER_THREADS, new_runtime

def workers(expected):
    # A runtime starts its threads as it is built; they take their names as they run.
    deadline = time.monotonic() + 5
    while True:
        names = []
        for task in os.listdir("/proc/self/task"):
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except FileNotFoundError:
                pass
        if names.count("tokio-rt-worker") == expected or time.monotonic() > deadline:
            return names.count("tokio-rt-worker")
        time.sleep(0.01)

threads = int(sys.argv[1])
runtimes = [new_runtime(threads=threads)]
first = (workers(threads), os.environ.get(TOKIO_WORKER_THREADS))
os.environ[TOKIO_WORKER_THREADS] = "2"
runtimes.append(new_runtime(threads=threads))
second = (workers(2 * threads), os.environ.get(TOKIO_WORKER_THREADS))
print(json.dumps([first, second]))
"""
"""Builds runtimes of ``argv[1]`` threads in a process of its own, where no other runtime
(the session's, its blocking threads named like its workers) moves the count."""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads threads from /proc")
@pytest.mark.parametrize("threads", [1, 3])
def test_a_runtime_starts_as_many_worker_threads_as_asked_and_leaves_the_environment(
    threads: int,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != TOKIO_WORKER_THREADS}
    done = subprocess.run(
        [sys.executable, "-c", RUNTIMES_IN_A_FRESH_PROCESS, str(threads)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = json.loads(done.stdout)
    # Unset before: the threads asked for, and unset again after.
    assert first == [threads, None]
    # A value the process had is there again afterwards.
    assert second == [2 * threads, "2"]
    with pytest.raises(ValueError, match="at least one thread"):
        new_runtime(threads=0)


def test_a_bridge_runtime_has_one_thread_unless_the_setting_says_otherwise():
    with open_telemetry(Settings(metrics_port=0), "bridge", runtime_threads=1) as telemetry:
        assert telemetry.runtime is shared_runtime(1)
        assert telemetry.runtime is not shared_runtime()
    chosen = Settings(metrics_port=0, temporal_runtime_threads=2)
    with open_telemetry(chosen, "bridge", runtime_threads=1) as telemetry:
        assert telemetry.runtime is shared_runtime(2)
    with open_telemetry(Settings(metrics_port=0), "worker-x") as telemetry:
        assert telemetry.runtime is shared_runtime()


def test_a_process_that_records_the_sdk_metrics_builds_only_its_own_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def shared(threads: int | None = None) -> Runtime:
        raise AssertionError(f"the shared runtime ({threads} threads) was built as well")

    monkeypatch.setattr(telemetry_module, "shared_runtime", shared)
    with open_telemetry(Settings(metrics_port=0), "bridge", sdk_metrics=True) as telemetry:
        assert telemetry.sdk is not None
        assert telemetry.runtime is not shared_runtime()


class Opened(Exception):
    """Raised where ``run_bridge`` opens its telemetry, with what it asked for."""


def test_run_bridge_asks_for_one_runtime_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def opened(settings: Settings, process: str, *args: Any, **options: Any) -> Iterator[None]:
        raise Opened(process, options.get("runtime_threads"))
        yield

    monkeypatch.setattr(wiring, "open_telemetry", opened)
    with pytest.raises(Opened) as raised:
        asyncio.run(wiring.run_bridge(Settings(metrics_port=0)))
    assert raised.value.args == ("bridge", 1)
    assert wiring.BRIDGE_RUNTIME_THREADS == 1


def test_metrics_server_serves_the_registry_and_the_sdk_metrics():
    settings = Settings(metrics_port=free_port())
    with open_telemetry(settings, "worker-x") as telemetry:
        telemetry.metrics.events_consumed.labels("orders").inc(3)
        assert telemetry.metrics_url == f"http://127.0.0.1:{settings.metrics_port}/metrics"
        assert telemetry.runtime is not shared_runtime()
        with urllib.request.urlopen(telemetry.metrics_url, timeout=5) as response:
            text = response.read().decode()
        assert 'ktb_events_consumed_total{topic="orders"} 3.0' in text
        assert "process_resident_memory_bytes" in text
    # Closed: the port is free again and the collectors are gone from the registry.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, not a listener
        sock.bind(("127.0.0.1", settings.metrics_port))
    assert (
        "process_resident_memory_bytes" not in generate_latest(telemetry.metrics.registry).decode()
    )


def test_a_taken_metrics_port_is_a_config_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with (
            pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"),
            open_telemetry(Settings(metrics_port=port), "bridge"),
        ):
            pass


def test_tracing_is_on_with_an_exporter_and_gives_the_client_its_interceptor():
    exporter = InMemorySpanExporter()
    with open_telemetry(Settings(), "bridge", span_exporter=exporter) as telemetry:
        assert telemetry.tracer is not None
        assert telemetry.client_interceptors == [telemetry.tracing.interceptor]  # type: ignore[union-attr]


@dataclass
class Record:
    topic: str = "orders"
    partition: int = 1
    offset: int = 7
    timestamp: int = 0
    key: bytes | None = b"o-1"
    value: bytes | None = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def traced() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_consume_span_continues_the_record_trace():
    tracer, exporter = traced()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = Record(headers=[("ce_id", b"evt-1"), ("traceparent", parent.encode())])
    with tracing.consume_span(tracer, record) as span:
        inner = tracing.current_traceparent()
        tracing.record_result(span, Result(Outcome.STARTED, "start-order", "start", "order-1", "r"))
    (finished,) = exporter.get_finished_spans()
    assert f"{finished.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == "b7ad6b7169203331"
    assert finished.attributes["messaging.message.id"] == "evt-1"
    assert finished.attributes["ktb.result"] == "started"
    assert finished.attributes["temporalWorkflowID"] == "order-1"
    assert inner == f"00-{finished.context.trace_id:032x}-{finished.context.span_id:016x}-01"


def test_consume_span_without_traceparent_starts_a_trace_and_marks_dead_letters():
    tracer, exporter = traced()
    with tracing.consume_span(tracer, Record()) as span:
        tracing.record_result(span, Result(Outcome.DEAD_LETTERED, detail="unknown_schema: x"))
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is None
    assert not finished.status.is_ok


def test_no_span_no_traceparent():
    assert tracing.current_traceparent() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "0af7651916cd43dd8448eb211c80319c",
        ),
        ("garbage", None),
        (None, None),
        ("00-short-b7ad6b7169203331-01", None),
    ],
)
def test_trace_id_of(value, expected):
    assert tracing.trace_id_of(value) == expected


def test_outgoing_traceparent_continues_only_the_triggering_trace():
    tracer, _ = traced()
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.outgoing_traceparent(incoming) == incoming  # no span: the memo's
    assert tracing.outgoing_traceparent(None) is None
    with tracing.consume_span(tracer, Record(headers=[("traceparent", incoming.encode())])):
        same_trace = tracing.outgoing_traceparent(incoming)
    with tracer.start_as_current_span("unrelated"):
        unrelated = tracing.outgoing_traceparent(incoming)
        fresh = tracing.outgoing_traceparent(None)
        malformed = tracing.outgoing_traceparent("garbage")
    assert tracing.trace_id_of(same_trace) == "0af7651916cd43dd8448eb211c80319c"
    assert same_trace != incoming
    assert unrelated == incoming
    assert fresh is not None and fresh == malformed


def test_otlp_endpoint_exports_spans_over_http():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        setup = tracing.setup_tracing(Settings(otlp_endpoint=endpoint), "ktb-bridge")
        assert setup is not None
        with setup.tracer.start_as_current_span("process orders"):
            pass
        setup.shutdown()  # flushes the batch
    finally:
        server.shutdown()
        server.server_close()
    (path, body), *_ = received
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "ktb-bridge"
    assert [s.name for ss in resource_spans.scope_spans for s in ss.spans] == ["process orders"]
