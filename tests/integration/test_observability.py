"""Observability acceptance: scraped metrics, one trace from event to outcome, JSON logs.

The bridge and the order-fulfilment worker run in-process, each with its own
``Telemetry`` (registry, ``/metrics`` server on a free port, Temporal runtime,
tracer) exactly as ``ktb bridge`` and ``run_worker`` wire them; the worker hosts
``OrderFulfillment`` and the real service activities on one task queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import WorkflowFailureError
from temporalio.worker import Worker

from bridge.consumer import BridgeConsumer
from bridge.dev.stack import free_port
from bridge.observability.logs import JsonFormatter
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import Telemetry, open_telemetry
from bridge.observability.tracing import trace_id_of
from bridge.observability.worker_metrics import WorkerMetrics
from bridge.sdk.faults import FaultInterceptor
from bridge.settings import Settings
from bridge.wiring import open_bridge, open_worker
from services.config import ServicesConfig
from services.inventory.activities import Inventory
from services.orders.activities import Orders
from services.orders.workflows import OrderFulfillment
from services.payments.worker import build as build_payments
from services.shipping.activities import Shipping
from tests.integration.observability_workflows import Ending
from tests.integration.shop import example_routes, open_stores
from tests.support import (
    Services,
    bridge_process,
    eventually,
    order_data,
    routes_config,
    running_api,
    workflow_result,
    write_routes,
)

PLACED = "com.example.order.placed"
POISON_HEADERS = [
    ("ce_specversion", b"1.0"), ("ce_id", b"poison-1"), ("ce_source", b"tests"),
    ("ce_type", PLACED.encode()), ("content-type", b"application/avro"),
]  # fmt: skip
SAGA = {"workflow_type": "OrderFulfillment"}
SLOW = 120.0
"""Deadline of waits that include whole sagas (seconds when the machine is not loaded)."""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Observed:
    """A running bridge and orders worker and what they expose."""

    bridge: Telemetry
    worker: Telemetry
    consumer: BridgeConsumer
    config: ServicesConfig


def wiring(uid: str, topics: dict[str, str]) -> ServicesConfig:
    """Every service on one task queue (one worker hosts the saga and its activities)."""
    queue = f"obs-{uid}"
    return ServicesConfig(
        orders_queue=queue,
        inventory_queue=queue,
        payments_queue=queue,
        shipping_queue=queue,
        outcome_topic=topics["outcomes"],
        compensation_topic=topics["compensations"],
        retry_scale=0.01,
    )


@contextlib.asynccontextmanager
async def observed(
    settings: Settings,
    topics: dict[str, str],
    uid: str,
    tmp_path: Path,
    exporter: InMemorySpanExporter | None = None,
) -> AsyncIterator[Observed]:
    """Bridge (example routes) and worker, each serving ``/metrics`` on its own port."""
    config = wiring(uid, topics)
    base = settings.model_copy(
        update={
            "data_dir": tmp_path,
            "routes_file": write_routes(tmp_path / "routes.yaml", example_routes(config, topics)),
        }
    )
    bridge_settings = base.model_copy(update={"metrics_port": free_port()})
    worker_settings = base.model_copy(update={"metrics_port": free_port()})
    stores = open_stores(base)
    payments = build_payments(config, stores["payments"])
    inventory = Inventory(stores["inventory"], config.default_stock)
    activities = [
        inventory.reserve,
        inventory.release,
        payments.charge,
        payments.confirm,
        payments.refund,
        Shipping(stores["shipping"]).create_shipment,
        Orders(stores["orders"]).record,
    ]
    try:
        with (
            open_telemetry(worker_settings, "worker", span_exporter=exporter) as worker,
            open_telemetry(bridge_settings, "bridge", span_exporter=exporter) as bridge,
        ):
            async with (
                open_worker(
                    worker_settings,
                    worker,
                    config.orders_queue,
                    [OrderFulfillment],
                    activities,
                    [FaultInterceptor(config.retry_scale)],
                ),
                open_bridge(bridge_settings, bridge) as consumer,
            ):
                task = asyncio.create_task(consumer.run())
                try:
                    yield Observed(bridge, worker, consumer, config)
                finally:
                    consumer.stop()
                    await asyncio.wait_for(task, 60)
    finally:
        for store in stores.values():
            store.close()


async def scrape(telemetry: Telemetry) -> Samples:
    """GET the process's real ``/metrics`` endpoint and parse every sample."""
    assert telemetry.metrics_url is not None
    async with httpx.AsyncClient() as http:
        response = await http.get(telemetry.metrics_url, timeout=10)
    response.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, if scraped."""
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> list[float]:
    """Samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and want <= ls]


async def produce_poison(services: Services, topic: str) -> None:
    """A record whose Avro fingerprint names no schema: it must be dead-lettered."""
    await services.produce_raw(topic, b"\xc3\x01not-a-real-fingerprint", POISON_HEADERS, b"bad")


async def test_scraped_metrics_after_duplicate_poison_and_compensation(
    services, topics, settings, uid, tmp_path
):
    declined, flaky = f"declined-{uid}", f"flaky-{uid}"
    orders = topics["orders"]
    for _ in range(2):  # the second is a redelivery of the same event: a duplicate
        await services.produce(
            orders, PLACED, order_data(declined, "tok_declined"), key=declined, id=f"evt-{uid}"
        )
    await services.produce(orders, PLACED, order_data(flaky, "tok_flaky"), key=flaky)
    await produce_poison(services, orders)

    async with observed(settings, topics, uid, tmp_path) as obs:
        declined_result = await workflow_result(services.client, f"order-{declined}", SLOW)
        assert declined_result["status"] == "compensated"
        flaky_result = await workflow_result(services.client, f"order-{flaky}", SLOW)
        assert flaky_result["status"] == "completed"

        async def bridge_done() -> Samples:
            samples = await scrape(obs.bridge)
            assert value(samples, "ktb_events_consumed_total", topic=orders) == 4
            assert value(samples, "ktb_in_flight") == 0
            lags = matching(samples, "ktb_consumer_lag", topic=orders)
            assert lags and all(lag == 0 for lag in lags), lags
            return samples

        async def worker_done() -> Samples:
            samples = await scrape(obs.worker)
            assert value(samples, "workflow_duration_seconds_count", **SAGA)
            return samples

        bridge = await eventually(bridge_done, SLOW)
        worker = await eventually(worker_done, SLOW)

    routed = "ktb_events_routed_total"
    started = value(bridge, routed, route="start-order", action="start", result="started")
    duplicate = value(bridge, routed, route="start-order", action="start", result="duplicate")
    if sum(matching(bridge, "ktb_transient_retries_total")) == 0:
        assert (started, duplicate) == (2, 1)
    else:  # a start that reached Temporal but timed out on the bridge is retried: a duplicate
        assert started and duplicate and started + duplicate == 3
    assert value(bridge, routed, route="", action="", result="dead_lettered") == 1
    assert value(bridge, "ktb_dead_letters_total", topic=orders, error_type="unknown_schema") == 1
    assert value(bridge, "ktb_event_to_action_seconds_count") == started
    # Every start Temporal answered, the duplicate's too, timed on the call alone.
    calls = value(bridge, "ktb_temporal_call_seconds_count", action="start")
    assert started is not None and duplicate is not None and calls == started + duplicate
    spent = value(bridge, "ktb_temporal_call_seconds_sum", action="start")
    assert spent is not None and 0 < spent < SLOW * calls
    # The Temporal SDK's own metrics are in the same scrape.
    assert sum(matching(bridge, "temporal_request_total", operation="StartWorkflowExecution")) >= 2

    published = "ktb_events_published_total"
    assert value(worker, published, topic=topics["outcomes"], kind="outcome") == 2
    assert value(worker, published, topic=topics["compensations"], kind="compensation") == 1
    assert value(worker, "ktb_compensations_total", **SAGA, step="reserve_inventory") == 1
    assert sum(matching(worker, "ktb_compensations_total")) == 1
    executions = "workflow_executions_total"
    assert value(worker, executions, **SAGA, status="completed") == 2
    assert sum(matching(worker, executions)) == 2
    assert value(worker, "workflow_duration_seconds_count", **SAGA) == 2
    assert value(worker, "workflow_duration_seconds_bucket", **SAGA, le="600.0") == 2
    # tok_flaky fails twice with NetworkError before the charge goes through.
    assert value(worker, "activity_retries_total", activity_type="payments.charge") == 2
    assert sum(matching(worker, "activity_retries_total")) == 2
    assert sum(matching(worker, "temporal_workflow_completed_total", **SAGA)) == 2


def trace_of(record: ConsumerRecord) -> str | None:
    """The trace id of a record's ``traceparent`` header."""
    headers = dict(record.headers)
    raw = headers.get("traceparent")
    return trace_id_of(raw.decode() if raw else None)


def span_id_of(record: ConsumerRecord) -> str:
    """The parent span id a record's ``traceparent`` names."""
    return dict(record.headers)["traceparent"].decode().split("-")[2]


async def test_one_trace_from_event_to_outcome(services, topics, settings, uid, tmp_path):
    exporter = InMemorySpanExporter()
    order = f"traced-{uid}"
    trace_id, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await services.produce(
        topics["orders"],
        PLACED,
        order_data(order, "tok_declined"),
        key=order,
        traceparent=f"00-{trace_id}-{parent_span}-01",
    )
    async with observed(settings, topics, uid, tmp_path, exporter):
        result = await workflow_result(services.client, f"order-{order}", SLOW)
        assert result["status"] == "compensated"
        outcome = (await services.read(topics["outcomes"], 1))[0]
        compensation = (await services.read(topics["compensations"], 1))[0]

        async def publishes_exported() -> list[ReadableSpan]:
            spans = list(exporter.get_finished_spans())
            names = [s.name for s in spans]
            assert names.count("RunActivity:ktb.publish") == 2, names
            return spans

        spans = await eventually(publishes_exported, SLOW)

    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    # One bridge span per attempt (more than one if a transient failure was retried).
    bridge_spans = by_name[f"process {topics['orders']}"]
    for bridge_span in bridge_spans:
        assert bridge_span.parent is not None
        assert f"{bridge_span.parent.span_id:016x}" == parent_span
    acted = bridge_spans[-1].attributes
    assert acted is not None
    assert acted["ktb.result"] in ("started", "duplicate")
    assert acted["temporalWorkflowID"] == f"order-{order}"
    for name in (
        "StartWorkflow:OrderFulfillment",
        "RunWorkflow:OrderFulfillment",
        "RunActivity:inventory.reserve",
        "RunActivity:payments.charge",
        "RunActivity:inventory.release",
        "RunActivity:ktb.publish",
    ):
        assert name in by_name, sorted(by_name)
    assert {f"{s.context.trace_id:032x}" for s in spans if s.context} == {trace_id}

    publish_spans = {f"{s.context.span_id:016x}" for s in by_name["RunActivity:ktb.publish"]}
    for record in (outcome, compensation):
        assert trace_of(record) == trace_id
        assert span_id_of(record) in publish_spans


async def test_bridge_log_line_for_a_started_workflow_is_json(
    services, topics, settings, uid, tmp_path
):
    order = f"logged-{uid}"
    event_id = await services.produce(topics["orders"], PLACED, order_data(order), key=order)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ktb.ingress")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the per-event line is DEBUG: routine outcomes are counted

    async def logged() -> dict[str, Any]:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        # "duplicate" if a start that reached Temporal timed out on the bridge and was retried.
        ours = [
            line
            for line in lines
            if line.get("event_id") == event_id
            and line["msg"] in ("event started", "event duplicate")
        ]
        assert ours, lines
        return ours[-1]

    try:
        async with observed(settings, topics, uid, tmp_path):
            line = await eventually(logged, SLOW)
            await workflow_result(services.client, f"order-{order}", SLOW)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    assert line["workflow_id"] == f"order-{order}"
    assert line["run_id"]
    assert line["route"] == "start-order"
    assert line["topic"] == topics["orders"]
    assert isinstance(line["partition"], int) and isinstance(line["offset"], int)
    assert line["level"] == "debug" and line["logger"] == "ktb.ingress"


async def test_ktb_bridge_process_serves_metrics_on_its_port(
    topics, settings, uid, tmp_path, monkeypatch
):
    port = free_port()
    monkeypatch.setenv("KTB_METRICS_PORT", str(port))
    config = routes_config(
        [
            {
                "name": f"start-{uid}",
                "topic": topics["orders"],
                "type": PLACED,
                "action": "start",
                "workflow": "KtbTestNoop",
                "task_queue": f"tq-{uid}",
                "workflow_id": f"wf-{uid}-{{data.order_id}}",
            }
        ]
    )
    log = tmp_path / "bridge.log"
    proc = bridge_process(settings, write_routes(tmp_path / "routes.yaml", config), log)
    try:

        async def served() -> str:
            assert proc.poll() is None, log.read_text()
            # Consuming: its SIGTERM handler is installed (the server starts before that).
            assert "bridge consuming" in log.read_text()
            try:
                async with httpx.AsyncClient() as http:
                    response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.TransportError as exc:
                raise AssertionError(f"not serving yet: {exc}") from exc
            text = response.text
            assert "ktb_in_flight 0.0" in text
            # The client connected: the SDK's own request counter is in the same scrape.
            assert 'temporal_request_total{operation="GetSystemInfo"}' in text
            return text

        text = await eventually(served, timeout=60)
        assert "process_cpu_seconds_total" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log.read_text()
    assert f"serves metrics on http://127.0.0.1:{port}/metrics" in log.read_text()


async def test_api_metrics_include_the_temporal_sdk_metrics(settings, tmp_path):
    api = settings.model_copy(update={"api_auth": False, "data_dir": tmp_path})
    with open_telemetry(api, "api", sdk_metrics=True) as telemetry:
        async with running_api(api, telemetry=telemetry) as url, httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/healthz")).status_code == 200

            async def scraped() -> str:
                text = (await http.get(f"{url}/metrics")).text
                # The SDK's metrics: the API's Temporal client connected in the lifespan.
                assert 'temporal_request_total{operation="GetSystemInfo"}' in text
                return text

            text = await eventually(scraped, SLOW)
    assert 'ktb_api_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text


async def test_workflow_metrics_count_each_ending_once(client, uid):
    metrics = Metrics()
    queue = f"endings-{uid}"
    # No cache: every workflow task replays the history, as after an eviction.
    async with Worker(
        client,
        task_queue=queue,
        workflows=[Ending],
        interceptors=[WorkerMetrics(metrics)],
        max_cached_workflows=0,
    ):
        handles = {
            mode: await client.start_workflow(
                Ending.run, mode, id=f"ending-{uid}-{mode}", task_queue=queue
            )
            for mode in ("complete", "fail", "continue", "wait")
        }
        assert await handles["complete"].result() == "complete"
        assert await handles["continue"].result() == "complete"
        with pytest.raises(WorkflowFailureError):
            await handles["fail"].result()

        async def waiting() -> bool:
            return await handles["wait"].query(Ending.get_mode) == "wait"

        await eventually(waiting)
        await handles["wait"].cancel()
        with pytest.raises(WorkflowFailureError):
            await handles["wait"].result()
        # Queries on closed runs replay them to the end: not counted again.
        assert await handles["complete"].query(Ending.get_mode) == "complete"
        assert await handles["fail"].query(Ending.get_mode) == "fail"

    def count(status: str) -> float | None:
        return value(
            {
                (s.name, frozenset(s.labels.items())): s.value
                for f in metrics.registry.collect()
                for s in f.samples
            },
            "workflow_executions_total",
            workflow_type="KtbTestEnding",
            status=status,
        )

    assert count("completed") == 2  # "complete" and the run "continue" continued as
    assert count("failed") == 1
    assert count("continued_as_new") == 1
    assert count("cancelled") == 1
