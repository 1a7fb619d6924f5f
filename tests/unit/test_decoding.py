"""Every wire format the bridge reads, through the one ``Decoder``: format detection,
the per-topic envelope templates, Schema Registry framing with schema resolution, and
what each kind of bad input becomes. The registry is confluent-kafka's in-memory mock
client behind the real ``SchemaRegistry`` wrapper."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from bridge.codec import Resolver, SchemaCatalog, WriterSchema, registry_schema_id
from bridge.decoding import Decoder, EnvelopeSpec
from bridge.envelope import encode_event
from bridge.errors import (
    ConfigError,
    DecodeError,
    SchemaIncompatibleError,
    SchemaMismatchError,
    SchemaNotLoaded,
    TenantError,
    TransientError,
    UnknownSchemaIdError,
    UnsupportedFormatError,
)
from bridge.ingress import Ingress
from bridge.registry import SchemaRegistry
from bridge.routes import Router, RoutesConfig, check_routes
from bridge.settings import REPO_ROOT
from tests.support import MemoryRecord, order_data
from tests.support.registry import FlakyClient, avro_body, framed, placed_schema, v2_added_field

PLACED = "com.example.order.placed"
TOPIC = "orders"


def record(
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
    key: bytes | None = b"o-1",
    offset: int = 7,
    timestamp: int = 1_767_225_600_000,
) -> MemoryRecord:
    return MemoryRecord(TOPIC, 1, offset, key, value, headers or [], timestamp)


@pytest.fixture
def client() -> FlakyClient:
    return FlakyClient()


@pytest.fixture
def registry(client: FlakyClient) -> SchemaRegistry:
    return SchemaRegistry(client)


async def register(client: FlakyClient, subject: str, schema: Any, kind: str = "AVRO") -> int:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    return await client.register_schema(subject, Schema(text, kind))


def catalog_example(catalog: SchemaCatalog, type_name: str) -> dict[str, Any]:
    """A value of each field of a flat schema (strings, numbers, nulls)."""
    sample = {"string": "x", "long": 1, "int": 1, "null": None}
    out: dict[str, Any] = {}
    for f in catalog.get(type_name).parsed["fields"]:
        kind = f["type"][0] if isinstance(f["type"], list) else f["type"]
        out[f["name"]] = sample[kind]
    return out


# --- format detection and the envelope of records without CloudEvents headers --------


def test_registry_framing_is_five_bytes_from_a_zero() -> None:
    assert registry_schema_id(b"\x00\x00\x00\x01\x02rest") == 258
    assert registry_schema_id(b"\x00\x00\x00\x01") is None
    assert registry_schema_id(b"\xc3\x01" + bytes(8)) is None
    assert registry_schema_id(b'{"a": 1}') is None


async def test_single_object_avro_without_headers_gets_the_default_envelope(
    catalog: SchemaCatalog,
) -> None:
    value = catalog.encode(PLACED, order_data("o-1"))
    event = await Decoder(catalog).decode(record(value))
    assert (event.id, event.type, event.source) == (f"{TOPIC}-1-7", PLACED, f"kafka:{TOPIC}")
    assert event.time == datetime(2026, 1, 1, tzinfo=UTC)
    assert (event.key, event.tenant_id, event.data) == ("o-1", None, order_data("o-1"))


async def test_outbox_relay_shape(catalog: SchemaCatalog) -> None:
    """Debezium's outbox event router: payload JSON, an ``id`` header, the aggregate id as
    key, the type in a header; the tenant from a header."""
    spec = EnvelopeSpec(
        id="{headers.id}",
        type="com.example.order.{headers.eventType}",
        source="outbox/{headers.aggregatetype}",
        tenant="{headers.tenant}",
        subject="{key}",
    )
    headers = [("id", b"4d47e190"), ("eventType", b"placed"), ("aggregatetype", b"order"),
               ("tenant", b"acme")]  # fmt: skip
    value = json.dumps(order_data("o-9")).encode()
    event = await Decoder(catalog, {TOPIC: spec}).decode(record(value, headers, key=b"o-9"))
    assert (event.id, event.type, event.source) == ("4d47e190", PLACED, "outbox/order")
    assert (event.tenant_id, event.subject, event.key) == ("acme", "o-9", "o-9")
    assert event.data == order_data("o-9")


async def test_formatted_templates_fill_coordinates_and_refuse_a_missing_key(
    catalog: SchemaCatalog,
) -> None:
    spec = EnvelopeSpec(id="{key}@{topic}/{partition}/{offset}", subject="order-{key}")
    decoder = Decoder(catalog, {TOPIC: spec})
    value = catalog.encode(PLACED, order_data("o-1"))
    event = await decoder.decode(record(value, offset=0))
    assert (event.id, event.subject) == (f"o-1@{TOPIC}/1/0", "order-o-1")
    for key in (None, b""):
        with pytest.raises(
            DecodeError, match=r"envelope's id .* has no value: the record has no 'key'"
        ):
            await decoder.decode(record(value, key=key))


async def test_plain_json_is_checked_against_the_local_schema(catalog: SchemaCatalog) -> None:
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(type=PLACED)})
    with pytest.raises(SchemaMismatchError) as caught:
        await decoder.decode(record(b'{"order_id": "o-1"}'))
    assert caught.value.field == "customer_id"


async def test_json_of_older_and_newer_producers_is_read_as_the_local_schema(
    catalog: SchemaCatalog,
) -> None:
    """What Avro resolution does, for JSON: a newer producer's field is dropped, down to
    nested records; a field with a default an older producer lacks is filled in."""
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(type="com.example.order.cancelled")})
    newer = {"order_id": "o-1", "reason": "r", "coupon": "x"}
    event = await decoder.decode(record(json.dumps(newer).encode()))
    assert event.data == {"order_id": "o-1", "reason": "r"}
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(type=PLACED)})
    data = order_data("o-2")
    data["items"][0]["colour"] = "red"
    event = await decoder.decode(record(json.dumps({**data, "v": 2}).encode()))
    assert event.data == order_data("o-2")
    completed = "com.example.order.completed"
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(type=completed)})
    older = {k: v for k, v in catalog_example(catalog, completed).items() if k != "payment_id"}
    event = await decoder.decode(record(json.dumps(older).encode()))
    assert event.data == {**older, "payment_id": None}


async def test_plain_json_needs_a_type_from_the_envelope(catalog: SchemaCatalog) -> None:
    with pytest.raises(DecodeError, match="name the type in the topic's envelope"):
        await Decoder(catalog).decode(record(b' \n{"order_id": "o-1"}'))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"\x01\x02\x03", "no format ktb reads"),
        (b"[1, 2]", "no format ktb reads"),
        (b"{not json", "not valid JSON"),
        (None, "tombstone"),
        (json.dumps(order_data("o")).encode(), "has no 'headers.id'"),
    ],
)
async def test_bytes_that_are_no_event_are_decode_errors(
    catalog: SchemaCatalog, value: bytes | None, error: str
) -> None:
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(id="{headers.id}", type=PLACED)})
    with pytest.raises(DecodeError, match=error):
        await decoder.decode(record(value, [("other", b"x")]))


async def test_a_tenant_header_that_is_no_tenant_id_is_refused(catalog: SchemaCatalog) -> None:
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(type=PLACED, tenant="{headers.t}")})
    value = json.dumps(order_data("o")).encode()
    with pytest.raises(TenantError):
        await decoder.decode(record(value, [("t", b"a/b")]))


async def test_envelope_time_from_a_header(catalog: SchemaCatalog) -> None:
    value = json.dumps(order_data("o")).encode()
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(type=PLACED, time="{headers.at}")})
    event = await decoder.decode(record(value, [("at", b"2026-03-04T05:06:07+00:00")]))
    assert event.time == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    event = await decoder.decode(record(value, [("at", b"1767225600000")]))
    assert event.time == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(DecodeError, match="RFC 3339"):
        await decoder.decode(record(value, [("at", b"yesterday")]))


@pytest.mark.parametrize(
    ("field", "template", "message"),
    [
        ("tenant", "{data.customer_id}", "never from data"),
        ("tenant", "{topic}", "never from data"),
        ("type", "{data.kind}", "picks the schema"),
        ("id", "{nope}", "reads 'nope'"),
        ("reader_subject", "{key}", "reads 'key'"),
        ("source", "{headers.a:>3}", "plain {field.path} only"),
        ("tenant", "a/b", "tenant id"),
    ],
)
def test_envelope_templates_are_checked_at_load(field: str, template: str, message: str) -> None:
    raw = {"routes": [], "envelope": {TOPIC: {field: template}}}
    with pytest.raises(ConfigError, match=message) as caught:
        RoutesConfig.parse(raw)
    assert f"envelope.{TOPIC}" in caught.value.message


def test_a_fixed_tenant_is_the_topic_trust_boundary() -> None:
    config = RoutesConfig.parse({"routes": [], "envelope": {TOPIC: {"tenant": "acme"}}})
    assert config.envelope[TOPIC].tenant == "acme"


# --- CloudEvents -------------------------------------------------------------------


async def test_binary_mode_records_use_their_own_headers(catalog: SchemaCatalog) -> None:
    encoded = encode_event(catalog, type=PLACED, data=order_data("o-2"), id="evt-2", source="s",
                           key="o-2", tenant_id="acme")  # fmt: skip
    decoder = Decoder(catalog, {TOPIC: EnvelopeSpec(id="{offset}", tenant="globex")})
    event = await decoder.decode(record(encoded.value, encoded.headers, key=encoded.key))
    assert (event.id, event.type, event.tenant_id) == ("evt-2", PLACED, "acme")
    with pytest.raises(DecodeError, match="no ce_id header"):
        headers = [(k, v) for k, v in encoded.headers if k != "ce_id"]
        await decoder.decode(record(encoded.value, headers))


async def test_structured_mode(catalog: SchemaCatalog) -> None:
    body = {"specversion": "1.0", "id": "evt-3", "type": PLACED, "source": "shop",
            "time": "2026-01-02T03:04:05+00:00", "tenantid": "acme",
            "data": order_data("o-3")}  # fmt: skip
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    event = await Decoder(catalog).decode(record(json.dumps(body).encode(), headers))
    assert (event.id, event.source, event.tenant_id) == ("evt-3", "shop", "acme")
    assert event.data == order_data("o-3")
    avro = {**body, "datacontenttype": "application/avro"}
    del avro["data"]
    avro["data_base64"] = base64.b64encode(catalog.encode(PLACED, order_data("o-4"))).decode()
    event = await Decoder(catalog).decode(record(json.dumps(avro).encode(), headers))
    assert event.data == order_data("o-4")
    with pytest.raises(DecodeError, match="no 'id' attribute"):
        await Decoder(catalog).decode(record(b'{"specversion": "1.0"}', headers))


# --- Schema Registry framing ---------------------------------------------------------


async def test_registry_avro_v1_and_v2_producers_both_read_as_the_local_schema(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    v1 = await register(client, PLACED, placed_schema(catalog))
    v2 = await register(client, PLACED, v2_added_field(catalog))
    assert v1 != v2
    decoder = Decoder(catalog, registry=registry)
    old = framed(v1, avro_body(placed_schema(catalog), order_data("o-1")))
    new = framed(v2, avro_body(v2_added_field(catalog), {**order_data("o-2"), "coupon": "x"}))
    first = await decoder.decode(record(old))
    second = await decoder.decode(record(new, offset=8))
    assert (first.type, first.id, first.content_type) == (
        PLACED,
        f"{TOPIC}-1-7",
        "application/avro",
    )
    assert first.data == order_data("o-1")
    assert second.data == order_data("o-2")  # read as the reader: no coupon
    # Each id was asked for once; the next records come from the cache, synchronously.
    for _ in range(3):
        assert decoder.decode_now(record(new)).data == order_data("o-2")
    assert (registry.requests, client.lookups) == (2, 2)


async def test_a_removed_optional_field_resolves_to_its_default(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    # The reader (the subject's latest, no local schema) has an optional field the
    # writer (an older producer) never wrote.
    name = "com.example.order.noted"
    writer = {"type": "record", "name": name, "fields": [{"name": "order_id", "type": "string"}]}
    reader = {**writer, "fields": [*writer["fields"],
              {"name": "note", "type": ["null", "string"], "default": None}]}  # fmt: skip
    wid = await register(client, f"{TOPIC}-value", writer)
    await register(client, f"{TOPIC}-value", reader)
    decoder = Decoder(catalog, registry=registry)
    with pytest.raises(SchemaNotLoaded):
        decoder.decode_now(record(framed(wid, avro_body(writer, {"order_id": "o"}))))
    event = await decoder.decode(record(framed(wid, avro_body(writer, {"order_id": "o"}))))
    assert (event.type, event.data) == (name, {"order_id": "o", "note": None})


async def test_a_type_with_no_reader_schema_anywhere_is_read_as_written(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    name = "com.example.order.audited"
    writer = {"type": "record", "name": name, "fields": [{"name": "n", "type": "long"}]}
    wid = await register(client, name, writer)  # record-name subject: no "orders-value"
    decoder = Decoder(catalog, registry=registry)
    for offset in range(3):
        event = await decoder.decode(
            record(framed(wid, avro_body(writer, {"n": 5})), offset=offset)
        )
        assert (event.type, event.data) == (name, {"n": 5})
    assert registry.requests == 2  # the id, and the subject found missing, once each


async def test_an_unresolvable_writer_is_schema_incompatible_naming_the_field(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    broken = placed_schema(catalog)
    broken["fields"] = [f for f in broken["fields"] if f["name"] != "currency"]
    broken["fields"][2]["type"]["items"]["fields"][1]["type"] = "string"
    sid = await register(client, PLACED, broken)
    data = {k: v for k, v in order_data("o").items() if k != "currency"}
    data["items"] = [{"sku": "s", "quantity": "1", "unit_price_cents": 5}]
    decoder = Decoder(catalog, registry=registry)
    for _ in range(2):  # decided once, reported every time
        with pytest.raises(SchemaIncompatibleError) as caught:
            await decoder.decode(record(framed(sid, avro_body(broken, data))))
        assert caught.value.error_type == "schema_incompatible"
        assert caught.value.field in ("currency", "items.quantity")
        assert repr(caught.value.field) in caught.value.message


async def test_registry_json_schema_framing(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    schema = {"title": PLACED, "type": "object", "properties": {"order_id": {"type": "string"}}}
    sid = await register(client, PLACED, schema, "JSON")
    decoder = Decoder(catalog, registry=registry)
    event = await decoder.decode(record(framed(sid, json.dumps(order_data("o-5")).encode())))
    assert (event.type, event.data, event.content_type) == (
        PLACED, order_data("o-5"), "application/json"
    )  # fmt: skip
    with pytest.raises(SchemaMismatchError):
        await decoder.decode(record(framed(sid, b'{"order_id": "o"}')))
    # No local schema for the title: the registry's JSON Schema checks the data.
    other = {"title": "com.example.other", "type": "object",
             "properties": {"n": {"type": "integer"}}, "required": ["n"]}  # fmt: skip
    oid = await register(client, "com.example.other", other, "JSON")
    assert (await decoder.decode(record(framed(oid, b'{"n": 1}')))).data == {"n": 1}
    with pytest.raises(SchemaMismatchError, match="'n'"):
        await decoder.decode(record(framed(oid, b'{"n": "one"}')))
    with pytest.raises(DecodeError, match="not valid JSON"):
        await decoder.decode(record(framed(oid, b"\x02\x04")))


async def test_registry_framed_data_under_cloudevents_headers(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    sid = await register(client, PLACED, v2_added_field(catalog))
    encoded = encode_event(catalog, type=PLACED, data=order_data("o"), id="evt-6", source="s")
    value = framed(sid, avro_body(v2_added_field(catalog), {**order_data("o-6"), "coupon": None}))
    event = await Decoder(catalog, registry=registry).decode(record(value, encoded.headers))
    assert (event.id, event.data) == ("evt-6", order_data("o-6"))


async def test_bad_registry_input(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    decoder = Decoder(catalog, registry=registry)
    with pytest.raises(UnknownSchemaIdError) as unknown:
        await decoder.decode(record(framed(4242, b"\x02")))
    assert (unknown.value.error_type, unknown.value.schema_id) == ("unknown_schema_id", 4242)
    proto = await register(client, "p-value", 'syntax = "proto3"; message M { string a = 1; }',
                           "PROTOBUF")  # fmt: skip
    with pytest.raises(UnsupportedFormatError) as unsupported:
        await decoder.decode(record(framed(proto, b"\x00\x0a\x01a")))
    assert unsupported.value.error_type == "unsupported_format"
    sid = await register(client, PLACED, placed_schema(catalog))
    with pytest.raises(DecodeError, match="does not decode"):
        await decoder.decode(record(framed(sid, b"\x02")))
    with pytest.raises(UnsupportedFormatError, match="KTB_SCHEMA_REGISTRY_URL"):
        await Decoder(catalog).decode(record(framed(sid, b"\x02")))


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        SchemaRegistryError(503, 50301, "unavailable"),
        SchemaRegistryError(401, 40101, "unauthorized"),
        ValueError("Expecting value: line 1 column 1 (char 0)"),
    ],
)
async def test_a_registry_that_does_not_answer_is_transient(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry, failure: Exception
) -> None:
    sid = await register(client, PLACED, placed_schema(catalog))
    value = framed(sid, avro_body(placed_schema(catalog), order_data("o")))
    client.failures = [failure, failure]
    decoder = Decoder(catalog, registry=registry)
    for _ in range(2):
        with pytest.raises(TransientError) as caught:
            await decoder.decode(record(value))
        assert not isinstance(caught.value, SchemaNotLoaded)
    assert (await decoder.decode(record(value))).data == order_data("o")


async def test_records_waiting_for_one_id_share_one_request(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    sid = await register(client, PLACED, placed_schema(catalog))
    value = framed(sid, avro_body(placed_schema(catalog), order_data("o")))
    decoder = Decoder(catalog, registry=registry)
    events = await asyncio.gather(*(decoder.decode(record(value, offset=n)) for n in range(20)))
    assert [e.id for e in events] == [f"{TOPIC}-1-{n}" for n in range(20)]
    assert client.lookups == 1


def test_routes_check_names_an_envelope_no_route_reads(catalog: SchemaCatalog) -> None:
    raw = {
        "routes": [{"name": "r", "topic": TOPIC, "type": PLACED, "action": "start",
                    "workflow": "W", "task_queue": "q", "workflow_id": "{data.order_id}"}],
        "envelope": {TOPIC: {}, "ordres": {"type": PLACED}},
    }  # fmt: skip
    problems = [str(p) for p in check_routes(RoutesConfig.parse(raw), catalog)]
    assert problems == ["route '(envelope)', field envelope.ordres: no route reads topic 'ordres'"]


async def test_the_example_routes_read_confluent_avro_and_the_outbox_relay(
    catalog: SchemaCatalog, client: FlakyClient, registry: SchemaRegistry
) -> None:
    """``routes.yaml`` as shipped: a Confluent-Avro ``order.placed`` on ``orders`` with no
    headers, and the outbox relay's JSON on ``orders.outbox``, both start the order."""
    config = RoutesConfig.load(REPO_ROOT / "routes.yaml")
    assert check_routes(config, catalog) == []
    ingress = Ingress(catalog, Router(config), None, None,
                      decoder=Decoder(catalog, config.envelope, registry))  # fmt: skip
    sid = await register(client, PLACED, placed_schema(catalog))
    confluent = MemoryRecord("orders", 2, 40, b"o-7", framed(sid, avro_body(
        placed_schema(catalog), order_data("o-7"))), [], 1)  # fmt: skip
    outbox = MemoryRecord("orders.outbox", 0, 3, b"o-8", json.dumps(order_data("o-8")).encode(),
                          [("id", b"a8f0"), ("eventType", b"placed")], 1)  # fmt: skip
    event, action = await ingress.predict(confluent)
    assert (event.id, action and action.route, action and action.workflow_id) == (
        "orders-2-40", "start-order", "order-o-7"
    )  # fmt: skip
    event, action = await ingress.predict(outbox)
    assert (event.id, event.source, action and action.route, action and action.workflow_id) == (
        "a8f0", "outbox:orders.outbox", "start-order-from-outbox", "order-o-8"
    )  # fmt: skip


NOTED = "com.example.order.noted"


def _record(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": NOTED, "fields": list(fields)}


ID = {"name": "order_id", "type": "string"}


@pytest.mark.parametrize(
    ("writer", "reader", "data", "projected"),
    [
        # v2 writer, v1 reader: the added field dropped.
        (_record(ID, {"name": "n", "type": "long"}), _record(ID), {"order_id": "o", "n": 1}, True),
        # v1 writer, v2 reader: the reader's field with a default filled in.
        (_record(ID), _record(ID, {"name": "note", "type": ["null", "string"], "default": None},
                              {"name": "n", "type": "long", "default": 7}),
         {"order_id": "o"}, True),
        # A promotion (int -> long) or a bytes default: fastavro resolves.
        (_record({"name": "n", "type": "int"}), _record({"name": "n", "type": "long"}),
         {"n": 3}, False),
        (_record(ID), _record(ID, {"name": "b", "type": "bytes", "default": "\u00ff"}),
         {"order_id": "o"}, False),
        # An alias names a writer field: fastavro resolves.
        (_record({"name": "old", "type": "string"}),
         _record({"name": "new", "type": "string", "aliases": ["old"]}), {"old": "x"}, False),
    ],
)  # fmt: skip
def test_a_resolution_reads_what_fastavro_resolution_reads(
    writer: dict[str, Any], reader: dict[str, Any], data: dict[str, Any], projected: bool
) -> None:
    resolution = Resolver().resolution(
        WriterSchema.parse(1, "AVRO", json.dumps(writer)),
        WriterSchema.parse(2, "AVRO", json.dumps(reader)),
    )
    assert (resolution.fields is not None) == projected
    body = avro_body(writer, data)
    expected = fastavro.schemaless_reader(
        io.BytesIO(body), fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )
    assert resolution.read(body, NOTED) == expected
