"""The event envelope: CloudEvents 1.0 in Kafka binary content mode.

Attributes travel as ``ce_*`` headers, the data content type as ``content-type``,
the W3C trace context as ``traceparent``/``tracestate``; the Kafka key is the
business key. Conversion goes through the ``cloudevents`` SDK's Kafka binding;
data is encoded by the schema catalog before it reaches the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.v1.event import CloudEvent

from bridge.codec import AVRO, JSON, SchemaCatalog
from bridge.errors import DecodeError, SchemaMismatchError
from bridge.tenancy import checked_tenant

TENANT = "tenantid"
CORRELATION = "correlationid"
CAUSATION = "causationid"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Headers = Sequence[tuple[str, bytes]]


class RecordLike(Protocol):
    """The parts of a Kafka consumer record the bridge reads: what every stage takes."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def ce_attributes(headers: Headers) -> dict[str, str]:
    """CloudEvents attributes from Kafka binary-mode headers: the one header parser.

    Header names are matched case-insensitively (``ce_`` prefix, ``content-type`` as
    ``datacontenttype``); the last of repeated headers wins; values are UTF-8 text
    taken as they are (the Kafka binding has no percent-encoding). Every reader of
    event headers (bridge, replay, redrive, DLQ listings, provenance) goes through
    here, so they all see the same id and tenant. ``DecodeError`` if a value is not UTF-8.
    """
    return read_headers(headers)[0]


def read_headers(headers: Headers) -> tuple[dict[str, str], dict[str, str]]:
    """``ce_attributes`` and ``trace_headers`` of one record in one pass over its headers
    (the decoder needs both); ``DecodeError`` as ``ce_attributes``."""
    attrs: dict[str, str] = {}
    trace: dict[str, str] = {}
    try:
        for name, raw in headers:
            role = _ROLES.get(name) or _role(name)
            if role[0] is _CE:
                attrs[role[1]] = raw.decode("utf-8")
            elif role[0] is _TRACE:
                trace[role[1]] = raw.decode("utf-8", "replace")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"CloudEvent header is not UTF-8: {exc}") from exc
    return attrs, trace


_CE = "ce"
_TRACE = "trace"
_ROLES: dict[str, tuple[str, str]] = {}
"""What each header name seen carries: (``_CE``, attribute), (``_TRACE``, trace header)
or ("", ""). Records of a topic repeat a few names; this spares lower-casing them."""
_ROLES_MAX = 1024
"""Names remembered at most: producers may send header names without end."""


def _role(name: str) -> tuple[str, str]:
    lname = name.lower()
    if lname[:3] == "ce_":
        role = (_CE, lname[3:])
    elif lname == "content-type":
        role = (_CE, "datacontenttype")
    elif lname in (TRACEPARENT, TRACESTATE):
        role = (_TRACE, lname)
    else:
        role = ("", "")
    if len(_ROLES) < _ROLES_MAX:
        _ROLES[name] = role
    return role


def ce_attribute(headers: Headers, name: str) -> str | None:
    """One attribute (``id``, ``type``, ``tenantid``...) as ``ce_attributes`` reads it.

    For display and filtering: a value that is not UTF-8 is decoded with replacement.
    """
    found: bytes | None = None
    header = "content-type" if name == "datacontenttype" else "ce_" + name
    for key, raw in headers:
        if key.lower() == header:
            found = raw
    return found.decode("utf-8", "replace") if found is not None else None


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded CloudEvent plus where it was read from (when it came from Kafka)."""

    id: str
    type: str
    source: str
    data: Mapping[str, Any]
    time: datetime | None = None
    subject: str | None = None
    tenant_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    content_type: str | None = None
    key: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    def as_context(self) -> dict[str, Any]:
        """The view of the event that route conditions and templates see."""
        return {
            "data": self.data,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject or "",
            "tenant": self.tenant_id or "",
            "key": self.key or "",
            "topic": self.topic or "",
        }


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What goes onto Kafka: key, value and headers in wire form."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def record_size(record: KafkaRecord | RecordLike) -> int:
    """Bytes of a record's key, value and headers (what counts against Kafka's limits)."""
    headers = sum(len(name.encode()) + len(value) for name, value in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


class _EncodedData:
    """A cloudevents ``Format`` for data that is already encoded (Avro or JSON bytes)."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes:
        """Return the body unchanged; decoding needs the event type and happens later."""
        return body

    def write_data(self, data: Any, datacontenttype: str | None) -> bytes:
        """Return the already-encoded data unchanged."""
        if not isinstance(data, bytes):
            raise TypeError("event data must be encoded before conversion")
        return data

    def read(self, event_factory: Any, data: str | bytes) -> BaseCloudEvent:
        """Structured mode is not used on Kafka by the bridge."""
        raise DecodeError("structured content mode is not supported on Kafka")

    def write(self, event: BaseCloudEvent) -> bytes:
        """Structured mode is not used on Kafka by the bridge."""
        raise DecodeError("structured content mode is not supported on Kafka")

    def get_content_type(self) -> str:
        """Media type of the binary data this format carries by default."""
        return AVRO


def decode_data(
    catalog: SchemaCatalog, type_name: str, content_type: str | None, body: bytes
) -> Any:
    """Decode and validate event data by content type and CloudEvents type."""
    ct = AVRO if content_type == AVRO else (content_type or AVRO).split(";", 1)[0].strip().lower()
    if ct == AVRO:
        return catalog.decode(body, expected_type=type_name)[1]
    if ct == JSON or ct.endswith("+json"):
        return catalog.from_json(type_name, body)
    raise DecodeError(f"unsupported content-type {content_type!r}")


def decode_record(
    catalog: SchemaCatalog,
    *,
    value: bytes | None,
    headers: Headers,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    timestamp_ms: int | None = None,
) -> Event:
    """Turn a binary-mode CloudEvent record into an ``Event``; raise a ``PermanentError``
    if it is not one.

    Reads the CloudEvents Kafka binding as ``cloudevents.core.bindings.kafka.from_binary``
    does (``ce_attributes``), without building the SDK's event object on the hot path.
    A tenant id that is not well formed is a ``TenantError``. The bridge reads every
    other wire format too, through ``bridge.decoding.Decoder``; this reads ktb's own.
    """
    if value is None:
        raise DecodeError("record has no value (tombstone)")
    attrs = ce_attributes(headers)
    check_attributes(attrs, BINARY)
    data = decode_data(catalog, attrs["type"], attrs.get("datacontenttype"), value)
    return event_from_attributes(
        attrs,
        data,
        trace=trace_headers(headers),
        key=key,
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
    )


BINARY = "binary"
STRUCTURED = "structured"


def check_attributes(attrs: Mapping[str, str], mode: str) -> None:
    """``DecodeError`` unless ``attrs`` hold a CloudEvent 1.0's required attributes.

    ``mode`` (``BINARY``, ``STRUCTURED``) says where they were read, for the message.
    """
    for required in ("id", "type", "source", "specversion"):
        if not attrs.get(required):
            if mode == BINARY:
                raise DecodeError(
                    f"record is not a binary-mode CloudEvent: no ce_{required} header"
                )
            raise DecodeError(f"structured-mode CloudEvent has no {required!r} attribute")
    if attrs["specversion"] != "1.0":
        raise DecodeError(f"unsupported CloudEvents specversion {attrs['specversion']!r}")


def trace_headers(headers: Headers) -> dict[str, str]:
    """The W3C trace context headers of a record (``traceparent``, ``tracestate``)."""
    trace: dict[str, str] = {}
    for name, raw in headers:
        role = _ROLES.get(name) or _role(name)
        if role[0] is _TRACE:
            trace[role[1]] = raw.decode("utf-8", "replace")
    return trace


def event_from_attributes(
    attrs: Mapping[str, str],
    data: Any,
    *,
    trace: Mapping[str, str],
    key: bytes | None,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    timestamp_ms: int | None,
) -> Event:
    """The ``Event`` of checked CloudEvents attributes (``check_attributes``) and decoded
    data; ``DecodeError`` for a ``time`` that is not RFC 3339, ``TenantError`` for a
    tenant id that is not well formed."""
    time: datetime | None = None
    if "time" in attrs:
        try:
            time = datetime.fromisoformat(attrs["time"])
        except ValueError as exc:
            raise DecodeError(f"ce_time is not an RFC 3339 timestamp: {attrs['time']!r}") from exc
    # Most events carry no extension attributes: one set difference tells.
    extensions = (
        {k: v for k, v in attrs.items() if k not in _KNOWN_ATTRS}
        if attrs.keys() - _KNOWN_ATTRS
        else {}
    )
    return new_event(
        attrs["id"],
        attrs["type"],
        attrs["source"],
        data,
        time,
        attrs.get("subject"),
        checked_tenant(attrs.get(TENANT) or None),
        attrs.get(CORRELATION),
        attrs.get(CAUSATION),
        trace.get(TRACEPARENT),
        trace.get(TRACESTATE),
        attrs.get("datacontenttype"),
        key.decode("utf-8", "replace") if key is not None else None,
        topic,
        partition,
        offset,
        timestamp_ms,
        extensions,
    )


def _positional_constructor(cls: type[Event]) -> Callable[..., Event]:
    """A constructor of ``cls`` taking a value for every field, in field order or by name.

    It sets the slots as the frozen dataclass's ``__init__`` does, without its
    per-field lookups and keyword matching (half the cost of building an event,
    once per record); the values are all given, so no default or factory is skipped.
    """
    names = [f.name for f in fields(cls)]
    source = (
        f"def new({', '.join(names)}):\n    value = new_object(cls)\n"
        + "".join(f"    set_field(value, {name!r}, {name})\n" for name in names)
        + "    return value\n"
    )
    namespace: dict[str, Any] = {
        "new_object": object.__new__, "set_field": object.__setattr__, "cls": cls
    }  # fmt: skip
    exec(source, namespace)
    constructor: Callable[..., Event] = namespace["new"]
    return constructor


new_event = _positional_constructor(Event)
"""``Event(...)`` on a record's path: every field given, in order or by name."""


def decode_consumed(catalog: SchemaCatalog, record: RecordLike) -> Event:
    """Decode a consumed Kafka record into an event with its coordinates (``decode_record``
    over the record's parts)."""
    return decode_record(
        catalog,
        value=record.value,
        headers=record.headers,
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )


def encode_event(
    catalog: SchemaCatalog,
    *,
    type: str,
    data: Mapping[str, Any],
    id: str,
    source: str,
    key: str | None = None,
    time: datetime | None = None,
    subject: str | None = None,
    tenant_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    content_type: str = AVRO,
    extensions: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> KafkaRecord:
    """Validate ``data`` against the type's schema and build the binary-mode record.

    ``body`` is data already encoded (Schema Registry framing), written as it is
    under ``content_type``.
    """
    checked_tenant(tenant_id or None)
    if body is None:
        if content_type == AVRO:
            body = catalog.encode(type, data)
        elif content_type == JSON:
            catalog.check(catalog.get(type), data)
            body = json.dumps(data, separators=(",", ":")).encode()
        else:
            raise SchemaMismatchError(f"unsupported content type {content_type!r}")
    attrs: dict[str, Any] = {
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": type,
        "time": time or datetime.now(UTC),
        "datacontenttype": content_type,
    }
    if subject:
        attrs["subject"] = subject
    for name, value in (
        (TENANT, tenant_id),
        (CORRELATION, correlation_id),
        (CAUSATION, causation_id),
    ):
        if value:
            attrs[name] = value
    attrs.update(extensions or {})
    try:
        message = ce_kafka.to_binary(CloudEvent(attrs, body), _ENCODED, lambda _e: key)
    except BaseCloudEventException as exc:
        raise SchemaMismatchError(f"invalid CloudEvent attributes: {exc}") from exc
    headers = list(message.headers.items())
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    if tracestate:
        headers.append((TRACESTATE, tracestate.encode()))
    return KafkaRecord(
        key=key.encode() if key is not None else None, value=message.value, headers=headers
    )


def headers_dict(headers: Headers) -> dict[str, str]:
    """Headers by exact name (the last of repeated ones), as text: display (``ktb tail``),
    DLQ inspection and envelope templates."""
    return {name: raw.decode("utf-8", "replace") for name, raw in headers}


_KNOWN_ATTRS = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        TENANT,
        CORRELATION,
        CAUSATION,
        ce_kafka.PARTITIONKEY_ATTR,
    }
)
_ENCODED = _EncodedData()
