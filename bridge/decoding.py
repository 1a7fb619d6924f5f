"""Records to events, whatever wrote them: the one decoder of live, replay and the API.

Each record's wire format is recognised by a few byte and header checks:

- ``ce_*`` headers: a CloudEvent in Kafka **binary mode**; its own headers are the
  envelope (``bridge.envelope``), its data Avro single-object, JSON, or Schema
  Registry framing.
- ``content-type: application/cloudevents+json``: a CloudEvent in **structured mode**
  (attributes and ``data`` or ``data_base64`` in one JSON object).
- anything else is a record from a producer that knows nothing of ktb: **Schema
  Registry framing** (``00`` + a 4-byte big-endian schema id + Avro or JSON; a
  Protobuf schema is ``unsupported_format``), **Avro single-object** (``C3 01``), or a
  **JSON** object. Its envelope comes from the topic's ``envelope:`` templates in the
  routes file (``EnvelopeSpec``): the id defaults to ``{topic}-{partition}-{offset}``,
  the type to the writer schema's full name, the time to the record's timestamp.

Registry-framed Avro is read with schema resolution: written with the registry's
schema of its id, read as the schema the route expects (the local catalogue's for
the type, else the latest version of the topic's reader subject). The registry is
asked once per id and subject; ``decode_now`` answers from what is cached, ``decode``
loads what is missing first (a ``TransientError`` while the registry is away).
"""

from __future__ import annotations

import base64
import contextlib
import json
import operator
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.codec import (
    AVRO,
    AVRO_KIND,
    JSON,
    JSON_KIND,
    MAGIC,
    PROTOBUF_KIND,
    REGISTRY_HEADER,
    EventSchema,
    Resolver,
    SchemaCatalog,
    WriterSchema,
    read_avro,
    registry_schema_id,
)
from bridge.envelope import (
    BINARY,
    STRUCTURED,
    Event,
    RecordLike,
    check_attributes,
    decode_data,
    event_from_attributes,
    headers_dict,
    new_event,
    read_headers,
)
from bridge.errors import (
    BridgeError,
    ConfigError,
    DecodeError,
    SchemaMismatchError,
    SchemaNotLoaded,
    TenantError,
    UnsupportedFormatError,
)
from bridge.templates import Template
from bridge.tenancy import checked_tenant

if TYPE_CHECKING:
    from bridge.registry import SchemaRegistry
    from bridge.settings import Settings

STRUCTURED_CONTENT_TYPE = "application/cloudevents"
"""Prefix of the content type of a structured-mode CloudEvent (``+json``)."""
ENVELOPE_ROOTS = frozenset(
    {"headers", "key", "data", "topic", "partition", "offset", "timestamp", "schema"}
)
"""What an envelope template may read: the record's headers (by exact name), its key,
its decoded data, its coordinates and timestamp (ms), the writer schema's full name."""
TENANT_ROOTS = frozenset({"headers", "key"})
TYPE_ROOTS = ENVELOPE_ROOTS - {"data"}
READER_SUBJECT_ROOTS = frozenset({"topic", "type"})
COORDINATES = frozenset({"topic", "partition", "offset"})
"""Context fields every consumed record has a value for."""
LOAD_ATTEMPTS = 3
"""Registry lookups one record may need in turn: its writer schema, its reader subject."""
_JSON_START = frozenset(b"{")
_BLANK = b" \t\r\n"


class EnvelopeSpec(BaseModel):
    """How a topic's records without CloudEvents headers become events (``envelope:``).

    Each attribute is a template (``bridge.templates``) over ``headers.<name>``, ``key``,
    ``data.<path>``, ``topic``, ``partition``, ``offset``, ``timestamp`` and ``schema``
    (the writer schema's full name); text without ``{...}`` is a fixed value. The
    tenant may read only headers and the key: whoever may write the topic speaks for
    its tenants, and data is what they write.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("{topic}-{partition}-{offset}", description="Event id: unique per record")
    type: str = Field("{schema}", description="Event type (the route's `type`)")
    source: str = Field("kafka:{topic}", description="CloudEvents source")
    time: str | None = Field(
        None, description="RFC 3339 text or epoch milliseconds; default: the record timestamp"
    )
    subject: str | None = None
    tenant: str | None = Field(None, description="Only from headers or the key")
    reader_subject: str = Field(
        "{topic}-value",
        description="Registry subject whose latest version is the reader schema of a type "
        "with no local schema (`{type}` under the record-name strategy)",
    )

    @model_validator(mode="after")
    def _templates(self) -> EnvelopeSpec:
        checks = {
            "id": ENVELOPE_ROOTS,
            "type": TYPE_ROOTS,
            "source": ENVELOPE_ROOTS,
            "time": ENVELOPE_ROOTS,
            "subject": ENVELOPE_ROOTS,
            "tenant": TENANT_ROOTS,
            "reader_subject": READER_SUBJECT_ROOTS,
        }
        for name, roots in checks.items():
            text = getattr(self, name)
            if text is None:
                continue
            template = _parse(name, text)
            if name == "tenant" and not template.paths():
                try:
                    checked_tenant(text)
                except TenantError as exc:
                    raise ValueError(f"tenant: {exc.message}") from exc
            for path in template.paths():
                if path[0] in roots:
                    continue
                if name == "tenant":
                    raise ValueError(
                        f"tenant: {text!r} reads {'.'.join(path)!r}; a tenant comes only from "
                        "headers or the key (whoever may write the topic speaks for its "
                        "tenants), never from data"
                    )
                if name == "type" and path[0] == "data":
                    raise ValueError(
                        f"type: {text!r} reads {'.'.join(path)!r}; the type picks the schema "
                        "the data is read with, so it comes from headers, the key, the "
                        "record or the writer schema"
                    )
                raise ValueError(
                    f"{name}: {text!r} reads {'.'.join(path)!r}; use " + ", ".join(sorted(roots))
                )
        return self


def _parse(name: str, text: str) -> Template:
    """``Template.parse``, its error reported as the field's validation error."""
    try:
        return Template.parse(text)
    except ConfigError as exc:
        raise ValueError(f"{name}: {exc.message}") from exc


class CompiledEnvelope:
    """An ``EnvelopeSpec`` with its templates parsed once, each into the cheapest renderer
    that fills it: a fixed text, one per topic, one field read whole, a format string
    over the record's own fields, or the general ``Template.render``."""

    def __init__(self, spec: EnvelopeSpec) -> None:
        self.spec = spec
        self.id = self._renderer("id", spec.id)
        self.type = self._renderer("type", spec.type)
        self.source = self._renderer("source", spec.source)
        self.time = self._renderer("time", spec.time) if spec.time else None
        self.subject = self._renderer("subject", spec.subject) if spec.subject else None
        self.tenant = self._renderer("tenant", spec.tenant) if spec.tenant else None
        self.reader_subject = self._renderer("reader_subject", spec.reader_subject)
        texts = [spec.id, spec.type, spec.source, spec.time, spec.subject, spec.tenant]
        self.reads_headers = any(
            p[0] == "headers" for t in texts if t is not None for p in Template.parse(t).paths()
        )

    @staticmethod
    def _renderer(name: str, text: str) -> Renderer:
        template = Template.parse(text)
        paths = template.paths()
        if not paths:
            return _Fixed(text)
        if all(len(p) == 1 for p in paths):
            if {p[0] for p in paths} == {"topic"}:
                return _PerTopic(name, template)
            if len(paths) == 1 and template.parts[0][1] is not None and len(template.parts) == 1:
                return _Field(name, template, paths[0][0])
            return _Formatted(name, template)
        return _General(name, template)


class Renderer:
    """Fills one envelope attribute from a record's context; ``DecodeError`` naming what
    the record lacks."""

    def __init__(self, name: str, template: Template) -> None:
        self.name = name
        self.template = template

    def __call__(self, context: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def missing(self, path: str) -> DecodeError:
        """The error of a template whose field ``path`` the record lacks (or has empty)."""
        if path == "schema":
            return DecodeError(
                f"the envelope's {self.name} ({self.template.source!r}) needs a writer "
                "schema and the record has none (plain JSON): name the type in the "
                "topic's envelope"
            )
        return DecodeError(
            f"the envelope's {self.name} ({self.template.source!r}) has no value: the "
            f"record has no {path!r}"
        )


class _General(Renderer):
    def __call__(self, context: Mapping[str, Any]) -> str:
        try:
            return self.template.render(context)
        except KeyError as exc:
            raise self.missing(str(exc.args[0])) from exc


class _Fixed(Renderer):
    def __init__(self, text: str) -> None:
        super().__init__("", Template.parse(text))
        self.text = text

    def __call__(self, context: Mapping[str, Any]) -> str:
        return self.text


class _PerTopic(Renderer):
    """Reads only the topic: rendered once per topic."""

    def __init__(self, name: str, template: Template) -> None:
        super().__init__(name, template)
        self._done: dict[str, str] = {}

    def __call__(self, context: Mapping[str, Any]) -> str:
        topic = context["topic"]
        found = self._done.get(topic)
        if found is None:
            found = self._done[topic] = self.template.render(context)
        return found


class _Field(Renderer):
    """The template is one field of the context, read whole (``{schema}``, ``{key}``)."""

    def __init__(self, name: str, template: Template, field: str) -> None:
        super().__init__(name, template)
        self.field = field

    def __call__(self, context: Mapping[str, Any]) -> str:
        value = context.get(self.field)
        if value is None or value == "":
            raise self.missing(self.field)
        return str(value)


class _Formatted(Renderer):
    """Fields of the context itself and text between them (``{topic}-{partition}-{offset}``).

    A record's coordinates are always there; only the other fields (the key, the
    schema) are checked for a value, and the values are read in one ``itemgetter``.
    """

    def __init__(self, name: str, template: Template) -> None:
        super().__init__(name, template)
        pieces: list[str] = []
        self.fields: list[str] = []
        for literal, path in template.parts:
            if path is None:
                pieces.append(literal.replace("{", "{{").replace("}", "}}"))
            else:
                pieces.append("{" + str(len(self.fields)) + "}")
                self.fields.append(path[0])
        self.format = "".join(pieces)
        self.checked = [f for f in self.fields if f not in COORDINATES]
        self.values: Callable[[Mapping[str, Any]], Any] = operator.itemgetter(*self.fields)
        self.single = len(self.fields) == 1

    def __call__(self, context: Mapping[str, Any]) -> str:
        for field in self.checked:
            value = context.get(field)
            if value is None or value == "":
                raise self.missing(field)
        try:
            values = self.values(context)
        except KeyError as exc:
            raise self.missing(str(exc.args[0])) from None
        return self.format.format(values) if self.single else self.format.format(*values)


class Decoder:
    """Turns consumed records into events in every wire format ktb reads (module doc).

    Owned by the ``Ingress``; built once per process from the schemas, the routes
    file's ``envelope:`` section and the registry (``bridge.wiring``).
    """

    def __init__(
        self,
        catalog: SchemaCatalog,
        envelopes: Mapping[str, EnvelopeSpec] | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.resolver = Resolver()
        self._envelopes = {topic: CompiledEnvelope(s) for topic, s in (envelopes or {}).items()}
        self._default = CompiledEnvelope(EnvelopeSpec())
        self._validators: dict[int, Any] = {}

    def envelope(self, topic: str) -> CompiledEnvelope:
        """The envelope templates of ``topic`` (the defaults when it has none)."""
        return self._envelopes.get(topic, self._default)

    async def decode(self, record: RecordLike) -> Event:
        """The event of ``record``, asking the registry first for what is not cached.

        Raises ``PermanentError`` for a record that is no event (dead-lettered) and
        ``TransientError`` while the registry does not answer.
        """
        for _ in range(LOAD_ATTEMPTS):
            try:
                return self.decode_now(record)
            except SchemaNotLoaded as missing:
                await self.load(missing)
        return self.decode_now(record)

    async def load(self, missing: SchemaNotLoaded) -> None:
        """Fetch what ``decode_now`` found missing into the registry's cache."""
        if self.registry is None:
            raise missing
        if missing.schema_id is not None:
            await self.registry.writer(missing.schema_id)
        if missing.subject is not None:
            await self.registry.latest(missing.subject)

    def decode_now(self, record: RecordLike) -> Event:
        """The event of ``record`` from what is cached; ``SchemaNotLoaded`` (transient)
        when a registry schema has not been fetched yet."""
        value = record.value
        if value is None:
            raise DecodeError("record has no value (tombstone)")
        attrs, trace = read_headers(record.headers)
        if len(attrs) > 1 or (attrs and "datacontenttype" not in attrs):
            return self._binary(record, value, attrs, trace)
        content_type = attrs.get("datacontenttype", "")
        if content_type[: len(STRUCTURED_CONTENT_TYPE)].lower() == STRUCTURED_CONTENT_TYPE:
            return self._structured(record, value, trace)
        return self._foreign(record, value, content_type, trace)

    # --- CloudEvents ------------------------------------------------------------------

    def _binary(
        self, record: RecordLike, value: bytes, attrs: dict[str, str], trace: dict[str, str]
    ) -> Event:
        check_attributes(attrs, BINARY)
        type_name = attrs["type"]
        schema_id = registry_schema_id(value)
        if schema_id is not None:
            writer = self._writer(schema_id)
            data = self._registry_data(writer, value, type_name, record.topic)
        else:
            data = decode_data(self.catalog, type_name, attrs.get("datacontenttype"), value)
        return self._event(record, attrs, data, trace)

    def _structured(self, record: RecordLike, value: bytes, trace: dict[str, str]) -> Event:
        body = _json_object(value, "structured-mode CloudEvent")
        attrs = {
            str(k).lower(): v if isinstance(v, str) else json.dumps(v)
            for k, v in body.items()
            if k not in ("data", "data_base64") and v is not None
        }
        check_attributes(attrs, STRUCTURED)
        type_name = attrs["type"]
        if "data_base64" in body:
            try:
                raw = base64.b64decode(body["data_base64"], validate=True)
            except (ValueError, TypeError) as exc:
                raise DecodeError(f"data_base64 is not base64: {exc}") from exc
            data = decode_data(self.catalog, type_name, attrs.get("datacontenttype"), raw)
        else:
            data = body.get("data")
            if type_name in self.catalog:
                self.catalog.check(self.catalog.get(type_name), data)
            elif not isinstance(data, Mapping):
                raise SchemaMismatchError(f"{type_name}: data must be an object")
        return self._event(record, attrs, data, trace)

    def _event(
        self, record: RecordLike, attrs: Mapping[str, str], data: Any, trace: dict[str, str]
    ) -> Event:
        return event_from_attributes(
            attrs,
            data,
            trace=trace,
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
        )

    # --- records without CloudEvents headers ------------------------------------------

    def _foreign(
        self, record: RecordLike, value: bytes, content_type: str, trace: dict[str, str]
    ) -> Event:
        envelope = self.envelope(record.topic)
        context: dict[str, Any] = {
            "headers": headers_dict(record.headers) if envelope.reads_headers else {},
            "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "schema": None,
        }
        schema_id = registry_schema_id(value)
        if schema_id is not None:
            writer = self._writer(schema_id)
            context["schema"] = writer.name
            type_name = envelope.type(context)
            data = self._registry_data(writer, value, type_name, record.topic)
            data_type = AVRO if writer.kind == AVRO_KIND else JSON
        elif value[:2] == MAGIC:
            schema, data = self.catalog.decode(value)
            context["schema"] = schema.name
            type_name = envelope.type(context)
            if type_name != schema.name:
                raise SchemaMismatchError(
                    f"data is a {schema.name} but the envelope's type is {type_name}"
                )
            data_type = AVRO
        elif _looks_like_json(value):
            data = _json_object(value)
            type_name = envelope.type(context)
            if type_name in self.catalog:
                data = self.catalog.resolve_json(type_name, data)
            data_type = JSON
        else:
            raise DecodeError(
                f"the record is in no format ktb reads (no CloudEvents headers; value starts "
                f"{value[:8].hex(' ')}; content-type {content_type or 'none'})"
            )
        context["data"] = data
        event_id = envelope.id(context)
        source = envelope.source(context)
        subject = None
        if envelope.subject is not None:
            subject = envelope.subject(context)
        tenant = None
        if envelope.tenant is not None:
            tenant = checked_tenant(envelope.tenant(context))
        time: datetime | None = None
        if envelope.time is not None:
            time = _time(envelope.time(context))
        elif record.timestamp:
            time = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        return new_event(  # positional, in field order: keywords cost a third more here
            event_id,  # id
            type_name,  # type
            source,
            data,
            time,
            subject,
            tenant,  # tenant_id
            None,  # correlation_id
            None,  # causation_id
            trace.get("traceparent"),
            trace.get("tracestate"),
            data_type,  # content_type
            context["key"],
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,  # timestamp_ms
            {},  # extensions
        )

    # --- Schema Registry framing --------------------------------------------------------

    def _writer(self, schema_id: int) -> WriterSchema:
        """The cached writer schema of ``schema_id``; ``SchemaNotLoaded`` on first sight."""
        if self.registry is None:
            raise UnsupportedFormatError(
                f"the record is in Schema Registry framing (schema id {schema_id}) and no "
                "registry is configured (KTB_SCHEMA_REGISTRY_URL)",
                format="schema-registry",
            )
        writer = self.registry.writer_cached(schema_id)
        if writer is None:
            raise SchemaNotLoaded(f"schema id {schema_id} not fetched yet", schema_id=schema_id)
        if writer.kind not in (AVRO_KIND, JSON_KIND):
            what = "Protobuf" if writer.kind == PROTOBUF_KIND else writer.kind
            raise UnsupportedFormatError(
                f"schema id {writer.id} is a {what} schema; ktb reads Avro and JSON Schema",
                format=writer.kind.lower(),
            )
        return writer

    def _registry_data(self, writer: WriterSchema, value: bytes, type_name: str, topic: str) -> Any:
        """The data of a registry-framed value written with ``writer``, read as ``type_name``."""
        body = value[REGISTRY_HEADER:]
        if writer.kind == AVRO_KIND:
            reader = self._reader(type_name, topic)
            what = f"{type_name} (schema id {writer.id})"
            if reader is None:
                return read_avro(body, writer.parsed, None, what)
            return self.resolver.resolution(writer, reader).read(body, what)
        data = _json_object(body)  # JSON Schema: ``_writer`` lets no other kind through
        if type_name in self.catalog:
            return self.catalog.resolve_json(type_name, data)
        self._validate_json(writer, data)
        return data

    def _reader(self, type_name: str, topic: str) -> EventSchema | WriterSchema | None:
        """The schema the route expects data of ``type_name`` in: the local one, else the
        latest version of the topic's reader subject; ``None``: read it as written."""
        if type_name in self.catalog:
            return self.catalog.get(type_name)
        assert self.registry is not None
        envelope = self.envelope(topic)
        subject = envelope.reader_subject({"topic": topic, "type": type_name})
        known, latest = self.registry.latest_cached(subject)
        if not known:
            raise SchemaNotLoaded(f"subject {subject!r} not fetched yet", subject=subject)
        if latest is None or latest.kind != AVRO_KIND:
            return None
        return latest

    def _validate_json(self, writer: WriterSchema, data: Any) -> None:
        """Check JSON data against its writer's JSON Schema (the validator built once)."""
        # jsonschema takes longer to import than the rest of the pipeline: only a topic
        # of JSON Schema framing without local schemas needs it.
        import jsonschema.exceptions
        import jsonschema.validators

        validator = self._validators.get(writer.id)
        if validator is None:
            try:
                cls = jsonschema.validators.validator_for(writer.raw)
                cls.check_schema(writer.raw)
            except jsonschema.exceptions.SchemaError as exc:
                raise DecodeError(
                    f"registry schema {writer.id} is not a valid JSON Schema: {exc.message}"
                ) from exc
            validator = cls(writer.raw)
            self._validators[writer.id] = validator
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            field = ".".join(str(p) for p in error.absolute_path) or "(data)"
            raise SchemaMismatchError(
                f"{writer.name or f'schema id {writer.id}'}: field {field!r}: {error.message}",
                field=field,
            )


@contextlib.asynccontextmanager
async def open_decoder(
    settings: Settings, catalog: SchemaCatalog, envelopes: Mapping[str, EnvelopeSpec]
) -> AsyncIterator[Decoder]:
    """The decoder of a process (bridge, replay, API), with the Schema Registry of
    ``settings`` when one is configured; its client is closed on exit."""
    if settings.schema_registry_url is None:
        yield Decoder(catalog, envelopes)
        return
    # The registry client is imported only where one is configured: ``import bridge``
    # (workflow code too) stays light.
    from bridge.registry import SchemaRegistry

    registry = SchemaRegistry.from_settings(settings)
    try:
        yield Decoder(catalog, envelopes, registry)
    finally:
        if registry is not None:
            await registry.aclose()


def _looks_like_json(value: bytes) -> bool:
    first = value[:1]
    if first and first in _BLANK:
        first = value.lstrip(_BLANK)[:1]
    return bool(first) and first[0] in _JSON_START


def _json_object(body: bytes, what: str = "data") -> dict[str, Any]:
    """``body`` parsed as a JSON object; ``DecodeError`` naming ``what`` otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DecodeError(f"{what} is JSON but not an object")
    return data


def _time(text: str) -> datetime:
    """An envelope time: RFC 3339 text or epoch milliseconds."""
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise DecodeError(f"the envelope's time {text!r} is not RFC 3339 or epoch ms") from exc


def _record(record: RecordLike) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "headers": headers_dict(record.headers),
    }


def _with_event(out: dict[str, Any], event: Event) -> dict[str, Any]:
    out["data"] = event.data
    if not any(name.startswith("ce_") for name in out["headers"]):
        # No CloudEvents headers: show the envelope the bridge gives the record.
        out["event"] = {"id": event.id, "type": event.type, "source": event.source}
    return out


def render(catalog: SchemaCatalog, record: RecordLike) -> dict[str, Any]:
    """One record as ``ktb tail`` prints it (a JSON object), decoded without a registry."""
    out = _record(record)
    try:
        return _with_event(out, Decoder(catalog).decode_now(record))
    except BridgeError as exc:
        out["error"] = exc.message
    return out


async def render_decoded(decoder: Decoder, record: RecordLike) -> dict[str, Any]:
    """One record as ``ktb tail`` prints it and the console shows it: ``data`` as the
    bridge reads it, or ``error``."""
    out = _record(record)
    try:
        return _with_event(out, await decoder.decode(record))
    except BridgeError as exc:
        out["error"] = exc.message
    return out
