"""Producers that know nothing of ktb, against real Kafka, Temporal and the real Schema
Registry (Apicurio): confluent-kafka's ``SerializingProducer`` with ``AvroSerializer`` (v1
and v2 of a type) and ``JSONSerializer``, an outbox relay's records, an unknown schema
id, and a registry that stops answering for 20 s while records wait for it.

None of these records carries a CloudEvents header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import SerializingProducer
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer

from bridge.codec import SchemaCatalog
from bridge.dev.registry import SchemaRegistry as LocalRegistry
from bridge.dev.stack import free_port
from bridge.dlq.publisher import ERROR_MESSAGE, ERROR_TYPE, dlq_topic
from bridge.kafka import ensure_topics
from bridge.observability.metrics import Metrics
from bridge.routes import RoutesConfig
from bridge.settings import Settings
from services.config import ServicesConfig
from services.orders.workflows import OrderFulfillment
from tests.integration.shop import all_activities, open_stores
from tests.support import (
    Services,
    eventually,
    order_data,
    routes_config,
    running_bridge,
    running_worker,
    runs_listed,
    workflow_result,
)
from tests.support.registry import placed_schema, v2_added_field
from tests.workflows import Noop

PLACED = "com.example.order.placed"
OUTAGE_S = 20.0
"""How long the registry stays stopped: the scenario, not a wait for a condition."""


def avro_serializer(url: str, schema: dict[str, Any]) -> AvroSerializer:
    """A Confluent Avro serializer as a shop configures it: auto-registering, with the
    record-name subject strategy."""
    conf = {"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy}
    return AvroSerializer(SchemaRegistryClient({"url": url}), json.dumps(schema), conf=conf)


def producer(settings: Settings, serializer: Any) -> SerializingProducer:
    """A librdkafka producer with a string key and ``serializer`` for values."""
    return SerializingProducer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "key.serializer": StringSerializer(),
            "value.serializer": serializer,
            "enable.idempotence": True,
        }
    )


async def produce(sender: SerializingProducer, topic: str, items: list[tuple[str, Any]]) -> None:
    """Produce ``(key, value)`` pairs in order and wait for every acknowledgement."""
    errors: list[Any] = []

    def send() -> None:
        for key, value in items:
            sender.produce(topic, key=key, value=value, on_delivery=lambda e, _m: errors.append(e))
        assert sender.flush(30) == 0

    await asyncio.to_thread(send)
    assert [e for e in errors if e is not None] == []


def start_route(topic: str, name: str, workflow: str, task_queue: str, workflow_id: str,
                **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "topic": topic, "type": PLACED, "action": "start",
            "workflow": workflow, "task_queue": task_queue, "workflow_id": workflow_id,
            **extra}  # fmt: skip


def order_routes(topics: dict[str, str], uid: str, **envelope: Any) -> RoutesConfig:
    """``start-order`` of the example routes on this test's topics, queue and outcome topic."""
    queue = f"orders-{uid}"
    memo = {"outcome_topic": topics["outcomes"], "inventory_queue": queue,
            "payments_queue": queue, "shipping_queue": queue}  # fmt: skip
    route = start_route(topics["orders"], "start-order", "OrderFulfillment", queue,
                        f"order-{uid}-{{data.order_id}}", memo=memo)  # fmt: skip
    return RoutesConfig.parse({"routes": [route], "unmatched": "dead_letter", "envelope": envelope})


@contextlib.asynccontextmanager
async def order_worker(
    settings: Settings, catalog: SchemaCatalog, client: Any, uid: str, tmp_path: Path
) -> AsyncIterator[None]:
    """``OrderFulfillment`` and every service activity on the test's task queue."""
    stores = open_stores(settings.model_copy(update={"data_dir": tmp_path}))
    activities = all_activities(ServicesConfig(), stores)
    async with running_worker(
        settings, catalog, client, f"orders-{uid}", [OrderFulfillment], activities
    ):
        yield


async def drained(services: Services, topic: str, timeout: float = 60.0) -> None:
    """Until the bridge's group has committed every record of ``topic``."""

    async def done() -> bool:
        return await services.committed(topic) == await services.end_offsets(topic)

    await eventually(done, timeout, 0.3)


async def no_letters(services: Services, topic: str) -> bool:
    return sum((await services.end_offsets(dlq_topic(topic))).values()) == 0


async def test_confluent_avro_v1_and_v2_start_once_and_publish_outcomes(
    services, topics, settings, catalog, client, uid, tmp_path
):
    url = settings.schema_registry_url
    v1 = producer(settings, avro_serializer(url, placed_schema(catalog)))
    v2 = producer(settings, avro_serializer(url, v2_added_field(catalog)))
    orders = topics["orders"]
    async with (
        order_worker(settings, catalog, client, uid, tmp_path),
        running_bridge(settings, catalog, client, order_routes(topics, uid)),
    ):
        # A producer's retry: the same order twice.
        await produce(v1, orders, [("o-1", order_data("o-1")), ("o-1", order_data("o-1"))])
        await produce(v2, orders, [("o-2", {**order_data("o-2"), "coupon": "SPRING"})])
        for order in ("o-1", "o-2"):
            result = await workflow_result(client, f"order-{uid}-{order}")
            assert result["status"] == "completed"
        await drained(services, orders)
    await runs_listed(client, f"order-{uid}-", {f"order-{uid}-o-1": 1, f"order-{uid}-o-2": 1})
    # One outcome per order: the repeated record changed nothing.
    assert sum((await services.end_offsets(topics["outcomes"])).values()) == 2
    outcomes = [services.decode(r) for r in await services.read(topics["outcomes"], 2)]
    assert sorted((e.type, e.data["order_id"]) for e in outcomes) == [
        ("com.example.order.completed", "o-1"),
        ("com.example.order.completed", "o-2"),
    ]
    assert await no_letters(services, orders)


async def test_json_schema_framing(services, topics, settings, catalog, client, uid):
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": PLACED,
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "total_cents": {"type": "integer"}},
        "required": ["order_id", "total_cents"],
    }
    conf = {"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy}
    registry = SchemaRegistryClient({"url": settings.schema_registry_url})
    sender = producer(settings, JSONSerializer(json.dumps(schema), registry, conf=conf))
    orders = topics["orders"]
    config = routes_config([start_route(orders, "start", "KtbTestNoop", f"tq-{uid}",
                                        f"wf-{uid}-{{data.order_id}}")])  # fmt: skip
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config),
    ):
        await produce(sender, orders, [("j-1", order_data("j-1")), ("j-1", order_data("j-1"))])
        assert await workflow_result(client, f"wf-{uid}-j-1") == "j-1"
        await drained(services, orders)
    await runs_listed(client, f"wf-{uid}-", {f"wf-{uid}-j-1": 1})
    assert await no_letters(services, orders)


async def test_outbox_relay_shape(services, settings, catalog, client, uid):
    """Debezium's outbox event router: the payload JSON as the value, the event id in an
    ``id`` header, the aggregate id as the key, the type in an ``eventType`` header."""
    outbox = f"orders.outbox-{uid}"
    await ensure_topics(settings, {outbox: 3, dlq_topic(outbox): 1})
    route = start_route(outbox, "start-outbox", "KtbTestNoop", f"tq-{uid}",
                        f"wf-{uid}-{{data.order_id}}")  # fmt: skip
    envelope = {"id": "{headers.id}", "type": "com.example.order.{headers.eventType}",
                "source": "outbox:{topic}"}  # fmt: skip
    config = RoutesConfig.parse({"routes": [route], "envelope": {outbox: envelope}})
    value = json.dumps(order_data("x-1")).encode()
    headers = [("id", f"evt-{uid}".encode()), ("eventType", b"placed")]
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config),
    ):
        for _ in range(2):  # the relay delivers at least once
            await services.produce_raw(outbox, value, headers, key=b"x-1")
        assert await workflow_result(client, f"wf-{uid}-x-1") == "x-1"
        await drained(services, outbox)
    await runs_listed(client, f"wf-{uid}-", {f"wf-{uid}-x-1": 1})
    handle = client.get_workflow_handle(f"wf-{uid}-x-1")
    memo = await (await handle.describe()).memo_value("ktb")
    assert memo["event_id"] == f"evt-{uid}"
    assert await no_letters(services, outbox)


async def test_unknown_schema_id_is_a_letter_with_the_original_bytes(
    services, topics, settings, catalog, client, uid
):
    orders = topics["orders"]
    config = routes_config([start_route(orders, "start", "KtbTestNoop", f"tq-{uid}",
                                        f"wf-{uid}-{{data.order_id}}")])  # fmt: skip
    unknown = b"\x00" + (2**31 - 7).to_bytes(4, "big") + b"\x06o-9"
    sender = producer(settings, avro_serializer(settings.schema_registry_url,
                                                placed_schema(catalog)))  # fmt: skip
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config),
    ):
        await services.produce_raw(orders, unknown, [("trace", b"t-1")], key=b"u-1")
        await produce(sender, orders, [("u-1", order_data("u-1"))])  # the key goes on
        assert await workflow_result(client, f"wf-{uid}-u-1") == "u-1"
        await drained(services, orders)
    [letter] = await services.read(dlq_topic(orders), 1)
    headers = dict(letter.headers)
    assert headers[ERROR_TYPE] == b"unknown_schema_id"
    assert str(2**31 - 7).encode() in headers[ERROR_MESSAGE]
    assert (letter.key, letter.value, headers["trace"]) == (b"u-1", unknown, b"t-1")


@contextlib.contextmanager
def dedicated_registry(directory: Path) -> Iterator[LocalRegistry]:
    """An Apicurio Registry of this test's own (the session's is shared by every test),
    stopped afterwards, and woken first if the test left it stopped."""
    registry = LocalRegistry(directory, free_port())
    try:
        registry.start()
        yield registry
    finally:
        if registry.service is not None:
            if registry.service.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(registry.service.proc.pid, signal.SIGCONT)
            registry.service.stop()


def pause_process_group(registry: LocalRegistry, sig: signal.Signals) -> None:
    assert registry.service is not None and registry.service.proc is not None
    os.killpg(registry.service.proc.pid, sig)


async def test_a_registry_stopped_for_20s_pauses_then_everything_drains(
    services, topics, settings, catalog, client, uid, tmp_path
):
    with dedicated_registry(tmp_path / "registry") as registry:
        await registry.wait_ready()
        own = settings.model_copy(update={"schema_registry_url": registry.url})
        orders = topics["orders"]
        ctx = SerializationContext(orders, MessageField.VALUE)
        v1 = avro_serializer(registry.url, placed_schema(catalog))
        v2 = avro_serializer(registry.url, v2_added_field(catalog))
        # Serialized (and registered) while the registry answers; the bridge sees v2's
        # id only once the registry has stopped.
        before = [(f"a{n}", v1(order_data(f"a{n}"), ctx)) for n in range(6)]
        during = [(f"b{n}", v2({**order_data(f"b{n}"), "coupon": None}, ctx)) for n in range(6)]
        during += [(f"c{n}", v1(order_data(f"c{n}"), ctx)) for n in range(6)]
        sender = producer(own, lambda value, _ctx: value)
        config = routes_config([start_route(orders, "start", "KtbTestNoop", f"tq-{uid}",
                                            f"wf-{uid}-{{data.order_id}}")])  # fmt: skip
        metrics = Metrics()
        async with (
            running_worker(own, catalog, client, f"tq-{uid}", [Noop]),
            running_bridge(own, catalog, client, config, metrics),
        ):
            await produce(sender, orders, before)
            await drained(services, orders)
            pause_process_group(registry, signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                await produce(sender, orders, during)

                async def retrying() -> bool:
                    value = metrics.registry.get_sample_value(
                        "ktb_transient_retries_total", {"topic": orders}
                    )
                    return bool(value)

                await eventually(retrying, OUTAGE_S, 0.2)
                # The outage lasts its 20 s: a scenario's length, not a wait for a state.
                await asyncio.sleep(max(0.0, stopped_at + OUTAGE_S - time.monotonic()))
                assert await no_letters(services, orders)
                committed = await services.committed(orders)
                assert committed != await services.end_offsets(orders)
            finally:
                pause_process_group(registry, signal.SIGCONT)
            await drained(services, orders, timeout=90)
        expected = {f"wf-{uid}-{key}": 1 for key, _ in before + during}
        await runs_listed(client, f"wf-{uid}-", expected)
        assert await no_letters(services, orders)
