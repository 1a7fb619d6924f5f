"""Records from producers that know nothing of ktb, through the pipeline in memory: the
real ``Ingress`` and its ``Decoder`` on the per-key engine, live and replayed, with
confluent-kafka's mock registry client behind the real ``SchemaRegistry``.

A registry that does not answer pauses the partition and dead-letters nothing; records
it cannot read become letters with their original bytes while the rest go on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.common._httpx_compat import httpx

from bridge.codec import SchemaCatalog
from bridge.decoding import Decoder
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.registry import SchemaRegistry
from bridge.routes import Router, RoutesConfig
from bridge.settings import Settings
from tests.support import order_data, until
from tests.support.memory import (
    MemoryKafka,
    RecordingDispatcher,
    consuming,
    memory_settings,
    replaying,
)
from tests.support.registry import FlakyClient, avro_body, placed_schema, v2_added_field

TOPIC = "shop.orders"
PLACED = "com.example.order.placed"
MODES = ["live", "replay"]
ROUTES = RoutesConfig.parse(
    {
        "routes": [
            {
                "name": "start-order",
                "topic": TOPIC,
                "type": PLACED,
                "action": "start",
                "workflow": "OrderFulfillment",
                "task_queue": "orders",
                "workflow_id": "order-{data.order_id}",
            }
        ],
        "unmatched": "dead_letter",
        # Confluent-Avro records: the default envelope (id from the coordinates, type
        # the writer schema's name); the tenant is the topic's.
        "envelope": {TOPIC: {"tenant": "shop"}},
    }
)


def settings() -> Settings:
    return memory_settings(max_in_flight=4, replay_concurrency=1)


def framed(schema_id: int, schema: dict[str, Any], data: dict[str, Any]) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + avro_body(schema, data)


async def run(mode: str, kafka: MemoryKafka, s: Settings, ingress: Ingress) -> None:
    if mode == "live":
        ends = kafka.end_offsets(TOPIC)
        async with consuming(kafka, s, ingress):
            await until(lambda: kafka.group_committed(s.group_id, TOPIC) == ends)
    else:
        await replaying(kafka, s, ingress, TOPIC)


@pytest.fixture
def client() -> FlakyClient:
    return FlakyClient()


def ingress_over(
    catalog: SchemaCatalog, kafka: MemoryKafka, client: FlakyClient, dispatcher: RecordingDispatcher
) -> Ingress:
    router = Router(ROUTES)
    decoder = Decoder(catalog, ROUTES.envelope, SchemaRegistry(client))
    return Ingress(
        catalog,
        router,
        dispatcher,
        DeadLetterPublisher(kafka.producer()),  # type: ignore[arg-type]
        Metrics(),
        decoder=decoder,
    )


@pytest.mark.parametrize("mode", MODES)
async def test_a_registry_outage_pauses_then_every_record_is_acted_on(
    mode: str, memory_kafka: MemoryKafka, catalog: SchemaCatalog, client: FlakyClient
) -> None:
    kafka = memory_kafka
    kafka.create(TOPIC, 1)
    v1 = await client.register_schema(PLACED, Schema(json.dumps(placed_schema(catalog)), "AVRO"))
    v2 = await client.register_schema(PLACED, Schema(json.dumps(v2_added_field(catalog)), "AVRO"))
    old = framed(v1, placed_schema(catalog), order_data("o-1"))
    new = framed(v2, v2_added_field(catalog), {**order_data("o-2"), "coupon": "c"})
    kafka.append(TOPIC, 0, b"o-1", old)
    kafka.append(TOPIC, 0, b"o-1", old)  # a producer's retry: the same bytes again
    kafka.append(TOPIC, 0, b"o-2", new)
    client.failures = [httpx.ConnectError("connection refused") for _ in range(4)]
    dispatcher = RecordingDispatcher()
    ingress = ingress_over(catalog, kafka, client, dispatcher)

    await run(mode, kafka, settings(), ingress)

    assert kafka.letters(TOPIC) == []
    acted = [(c.event.id, c.action.workflow_id, c.event.data["order_id"]) for c in dispatcher.acted]
    assert sorted(acted) == [
        (f"{TOPIC}-0-0", "shop:order-o-1", "o-1"),
        (f"{TOPIC}-0-1", "shop:order-o-1", "o-1"),
        (f"{TOPIC}-0-2", "shop:order-o-2", "o-2"),
    ]
    assert all("coupon" not in c.event.data for c in dispatcher.acted)
    # Two ids, each fetched once it answered; the failures before were retried.
    assert client.lookups == 2 + 4
    retried = ingress.metrics.registry.get_sample_value(
        "ktb_transient_retries_total", {"topic": TOPIC}
    )
    assert retried and retried >= 4
    if mode == "live":
        consumer = kafka.consumers[-1]
        tp = TopicPartition(TOPIC, 0)
        assert ("pause", tp) in consumer.pauses and ("resume", tp) in consumer.pauses


@pytest.mark.parametrize("mode", MODES)
async def test_records_the_registry_cannot_read_are_letters_with_their_bytes(
    mode: str, memory_kafka: MemoryKafka, catalog: SchemaCatalog, client: FlakyClient
) -> None:
    kafka = memory_kafka
    kafka.create(TOPIC, 1)
    good = await client.register_schema(PLACED, Schema(json.dumps(placed_schema(catalog)), "AVRO"))
    broken = placed_schema(catalog)
    broken["fields"] = [f for f in broken["fields"] if f["name"] != "currency"]
    bad = await client.register_schema("broken-value", Schema(json.dumps(broken), "AVRO"))
    proto = await client.register_schema(
        "p-value", Schema('syntax = "proto3"; message M { string a = 1; }', "PROTOBUF")
    )
    no_currency = {k: v for k, v in order_data("o-2").items() if k != "currency"}
    records = {
        "unknown_schema_id": kafka.append(TOPIC, 0, b"o-1", b"\x00\x00\x00\x30\x39\x02"),
        "schema_incompatible": kafka.append(TOPIC, 0, b"o-2", framed(bad, broken, no_currency)),
        "unsupported_format": kafka.append(TOPIC, 0, b"o-3", b"\x00" + proto.to_bytes(4, "big")),
        "decode_error": kafka.append(TOPIC, 0, b"o-4", b"\x00" + good.to_bytes(4, "big") + b"\x02"),
    }
    after = kafka.append(TOPIC, 0, b"o-1", framed(good, placed_schema(catalog), order_data("o-5")))
    dispatcher = RecordingDispatcher()

    await run(mode, kafka, settings(), ingress_over(catalog, kafka, client, dispatcher))

    letters = {int(dict(x.headers)["ktb_original_offset"]): x for x in kafka.letters(TOPIC)}
    assert sorted(letters) == sorted(r.offset for r in records.values())
    for error_type, original in records.items():
        letter = letters[original.offset]
        headers = dict(letter.headers)
        assert headers["ktb_error_type"].decode() == error_type
        assert (letter.key, letter.value) == (original.key, original.value)
    assert (
        b"currency"
        in dict(letters[records["schema_incompatible"].offset].headers)["ktb_error_message"]
    )
    assert [c.event.offset for c in dispatcher.acted] == [after.offset]
