"""CloudEvents Kafka binary mode: our reader agrees with the SDK's binding."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from bridge import envelope
from bridge.codec import SchemaCatalog
from bridge.envelope import (
    Event,
    ce_attribute,
    ce_attributes,
    decode_record,
    encode_event,
    event_from_attributes,
    trace_headers,
)
from bridge.errors import DecodeError, SchemaMismatchError, TenantError
from bridge.tenancy import valid_tenant
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


def test_header_values_are_read_as_they_are(catalog: SchemaCatalog) -> None:
    """The Kafka binding has no percent-encoding: ``evt%2D1`` is not ``evt-1`` anywhere."""
    record = encode_event(catalog, type=PLACED, data=order_data("o"), id="evt%2D1", source="s")
    assert dict(record.headers)["ce_id"] == b"evt%2D1"
    event = decode_record(catalog, value=record.value, headers=record.headers)
    assert event.id == "evt%2D1"
    assert ce_attribute(record.headers, "id") == "evt%2D1"


def test_one_parser_for_names_and_repeats() -> None:
    headers = [("CE_TenantId", b"acme"), ("ce_tenantid", b"globex"), ("Content-Type", b"x/y")]
    assert ce_attributes(headers) == {"tenantid": "globex", "datacontenttype": "x/y"}
    assert ce_attribute(headers, "tenantid") == "globex"
    assert ce_attribute(headers, "datacontenttype") == "x/y"
    assert ce_attribute(headers, "id") is None


def test_every_field_of_an_event_comes_from_its_own_attribute() -> None:
    attrs = {
        "specversion": "1.0", "id": "i", "type": "t", "source": "s",
        "time": "2026-01-02T03:04:05+00:00", "subject": "sub", "tenantid": "acme",
        "correlationid": "c", "causationid": "ca", "datacontenttype": "x/y", "myext": "e",
    }  # fmt: skip
    event = event_from_attributes(
        attrs, {"d": 1}, trace={"traceparent": TRACE, "tracestate": "ts"}, key=b"k",
        topic="top", partition=2, offset=3, timestamp_ms=4,
    )  # fmt: skip
    assert event == Event(
        id="i", type="t", source="s", data={"d": 1},
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), subject="sub", tenant_id="acme",
        correlation_id="c", causation_id="ca", traceparent=TRACE, tracestate="ts",
        content_type="x/y", key="k", topic="top", partition=2, offset=3, timestamp_ms=4,
        extensions={"myext": "e"},
    )  # fmt: skip
    assert type(event) is Event
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.id = "other"  # type: ignore[misc]


def test_header_names_without_end_are_still_read() -> None:
    # What each header name carries is remembered for a bounded number of names.
    for n in range(envelope._ROLES_MAX + 10):
        headers = [(f"X-Unique-{n}", b"v"), ("CE_Id", b"e"), ("TraceParent", TRACE.encode())]
        assert ce_attributes(headers) == {"id": "e"}
        assert trace_headers(headers) == {"traceparent": TRACE}
    assert len(envelope._ROLES) <= envelope._ROLES_MAX


@pytest.mark.parametrize("tenant", ["", "a:b", "a/b", "-a", "a b", "ä", "x" * 65, "a\x00"])
def test_malformed_tenants_are_refused_both_ways(catalog: SchemaCatalog, tenant: str) -> None:
    good = encode_event(catalog, type=PLACED, data=order_data("o"), id="e", source="s")
    headers = [*good.headers, ("ce_tenantid", tenant.encode())]
    if tenant == "":
        # An empty header is no tenant at all.
        assert decode_record(catalog, value=good.value, headers=headers).tenant_id is None
        return
    with pytest.raises(TenantError):
        decode_record(catalog, value=good.value, headers=headers)
    with pytest.raises(TenantError):
        encode_event(catalog, type=PLACED, data=order_data("o"), id="e", source="s",
                     tenant_id=tenant)  # fmt: skip


@pytest.mark.parametrize("tenant", ["acme", "a", "Globex-2.eu_west", "1" * 64])
def test_well_formed_tenants(tenant: str) -> None:
    assert valid_tenant(tenant)
