"""CloudEvents Kafka binary mode: our reader agrees with the SDK's binding."""

from __future__ import annotations

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from bridge.codec import SchemaCatalog
from bridge.envelope import decode_record, encode_event
from bridge.errors import DecodeError, SchemaMismatchError
from tests.support import order_data

PLACED = "com.example.order.placed"
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Raw:
    def read_data(self, body, ct):
        return body

    def write_data(self, data, ct):
        return data


def test_round_trip_with_extensions(catalog: SchemaCatalog) -> None:
    record = encode_event(
        catalog,
        type=PLACED,
        data=order_data("o-1"),
        id="evt-1",
        source="/tests",
        key="o-1",
        tenant_id="acme",
        correlation_id="corr",
        causation_id="cause",
        traceparent=TRACE,
    )
    names = [h for h, _ in record.headers]
    for header in ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type",
                   "ce_tenantid", "ce_correlationid", "ce_causationid", "traceparent"):  # fmt: skip
        assert header in names
    event = decode_record(
        catalog, value=record.value, headers=record.headers, key=record.key, topic="orders"
    )
    assert (event.id, event.type, event.source, event.key) == ("evt-1", PLACED, "/tests", "o-1")
    assert (event.tenant_id, event.correlation_id, event.causation_id) == ("acme", "corr", "cause")
    assert event.traceparent == TRACE
    assert event.data == order_data("o-1")

    sdk = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
        _Raw(),
        CloudEvent,
    )
    assert sdk.get_id() == event.id
    assert sdk.get_type() == event.type
    assert sdk.get_time() == event.time
    assert sdk.get_extension("tenantid") == event.tenant_id


def test_json_content_type(catalog: SchemaCatalog) -> None:
    record = encode_event(
        catalog, type=PLACED, data=order_data("o-2"), id="e", source="s",
        content_type="application/json",
    )  # fmt: skip
    event = decode_record(catalog, value=record.value, headers=record.headers)
    assert event.data["order_id"] == "o-2"


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", b"application/avro")],
        [("ce_id", b"1"), ("ce_type", b"x"), ("ce_source", b"s")],
        [("ce_id", b"1"), ("ce_type", b"x"), ("ce_source", b"s"), ("ce_specversion", b"0.1")],
        [("ce_id", b"\xff"), ("ce_type", b"x"), ("ce_source", b"s"), ("ce_specversion", b"1.0")],
    ],
)
def test_not_a_cloudevent(catalog: SchemaCatalog, headers) -> None:
    with pytest.raises(DecodeError):
        decode_record(catalog, value=b"x", headers=headers)


def test_data_that_does_not_fit_is_rejected(catalog: SchemaCatalog) -> None:
    good = encode_event(catalog, type=PLACED, data=order_data("o"), id="e", source="s")
    headers = [(k, v) for k, v in good.headers if k != "content-type"]
    headers.append(("content-type", b"application/json"))
    with pytest.raises(SchemaMismatchError):
        decode_record(catalog, value=b'{"order_id": "o"}', headers=headers)
