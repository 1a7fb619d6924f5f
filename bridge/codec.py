"""Avro schema catalog, the wire formats of event data, schema resolution.

Every ``.avsc`` under the schemas directory is one event type; the Avro full
name is the CloudEvents type (``com.example.order.placed``). Data on the wire is
Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint, little endian +
body), JSON validated against the same schema, or Schema Registry framing (``00``
+ a 4-byte big-endian schema id + Avro or JSON) whose writer schema the registry
holds (``WriterSchema``). ``Resolver`` reads Avro written with one schema as the
schema a route expects (Avro schema resolution), deciding once per pair.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
import fastavro
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate

from bridge.errors import (
    ConfigError,
    DecodeError,
    SchemaIncompatibleError,
    SchemaMismatchError,
    UnknownSchemaError,
)

MAGIC = b"\xc3\x01"
AVRO = "application/avro"
JSON = "application/json"
REGISTRY_MAGIC = 0
"""The first byte of Schema Registry framing; a 4-byte big-endian schema id follows."""
REGISTRY_HEADER = 5
AVRO_BODY_ERRORS = (EOFError, ValueError, IndexError, UnicodeDecodeError, OverflowError, KeyError)
"""What fastavro raises on bytes that do not decode as the schema says."""


def registry_schema_id(value: bytes) -> int | None:
    """The schema id of a value in Schema Registry framing; ``None`` if it is not framed so."""
    if len(value) >= REGISTRY_HEADER and value[0] == REGISTRY_MAGIC:
        return int.from_bytes(value[1:REGISTRY_HEADER], "big")
    return None


@dataclass(frozen=True)
class EventSchema:
    """One parsed event schema and its single-object fingerprint."""

    name: str
    parsed: Any
    fingerprint: bytes
    source: Path | None
    fields: frozenset[str]
    """Dotted paths of every record field, nested records and array items included."""


def _paths(schema: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(schema, dict) and schema.get("type") == "record":
        for f in schema["fields"]:
            path = f"{prefix}{f['name']}"
            yield path
            yield from _paths(f["type"], path + ".")
    elif isinstance(schema, list):
        for branch in schema:
            yield from _paths(branch, prefix)
    elif isinstance(schema, dict) and schema.get("type") == "array":
        yield from _paths(schema["items"], prefix)


class SchemaCatalog:
    """Every known event schema, by type name and by fingerprint; load once."""

    def __init__(self, schemas: Iterable[EventSchema]) -> None:
        self._by_name: dict[str, EventSchema] = {}
        self._by_fp: dict[bytes, EventSchema] = {}
        for s in schemas:
            if s.name in self._by_name:
                raise ConfigError(f"schema {s.name} is defined twice ({s.source})")
            self._by_name[s.name] = s
            self._by_fp[s.fingerprint] = s

    @classmethod
    def from_dir(cls, directory: Path) -> SchemaCatalog:
        """Load every ``*.avsc`` below ``directory``."""
        if not directory.is_dir():
            raise ConfigError(f"schemas directory {directory} does not exist")
        files = sorted(directory.rglob("*.avsc"))
        if not files:
            raise ConfigError(f"no .avsc files in {directory}")
        return cls(cls._load(f) for f in files)

    @staticmethod
    def _load(path: Path) -> EventSchema:
        try:
            raw = json.loads(path.read_text())
            parsed = fastavro.parse_schema(raw, _write_hint=True, _force=True)
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise ConfigError(f"{path}: invalid Avro schema: {exc}") from exc
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ConfigError(f"{path}: an event schema must be a named record")
        return EventSchema(
            name=parsed["name"],
            parsed=parsed,
            # fastavro renders the CRC-64-AVRO value as its little-endian bytes,
            # which is the byte order single-object encoding puts on the wire.
            fingerprint=bytes.fromhex(
                fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
            ),
            source=path,
            fields=frozenset(_paths(raw)),
        )

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._by_name

    def names(self) -> list[str]:
        """All known event type names, sorted."""
        return sorted(self._by_name)

    def get(self, type_name: str) -> EventSchema:
        """The schema of an event type, or ``UnknownSchemaError``."""
        try:
            return self._by_name[type_name]
        except KeyError:
            raise UnknownSchemaError(f"no schema for event type {type_name!r}") from None

    def encode(self, type_name: str, data: Mapping[str, Any]) -> bytes:
        """Validate ``data`` against the type's schema and return single-object bytes."""
        schema = self.get(type_name)
        self.check(schema, data)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, data)
        return buf.getvalue()

    def decode(self, value: bytes, expected_type: str | None = None) -> tuple[EventSchema, Any]:
        """Decode single-object bytes; the fingerprint picks the schema."""
        if len(value) < 10 or value[:2] != MAGIC:
            raise DecodeError("data is not Avro single-object encoded (no C3 01 marker)")
        schema = self._by_fp.get(value[2:10])
        if schema is None:
            raise UnknownSchemaError(f"unknown Avro schema fingerprint {value[2:10].hex()}")
        if expected_type is not None and schema.name != expected_type:
            raise SchemaMismatchError(
                f"data is a {schema.name} but the event type is {expected_type}"
            )
        try:
            return schema, fastavro.schemaless_reader(io.BytesIO(value[10:]), schema.parsed, None)
        except AVRO_BODY_ERRORS as exc:
            raise DecodeError(f"Avro body does not decode as {schema.name}: {exc}") from exc

    def from_json(self, type_name: str, value: bytes | str) -> Any:
        """Parse JSON data and validate it against the type's schema."""
        schema = self.get(type_name)
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"data is not valid JSON: {exc}") from exc
        self.check(schema, data)
        return data

    def resolve_json(self, type_name: str, data: Any) -> Any:
        """JSON data of another producer read as the type's schema, checked: what Avro
        schema resolution does for Avro (fields the schema lacks are dropped, fields it
        has a default for and the data lacks are filled in), so producers of older and
        newer versions of a type both fit."""
        schema = self.get(type_name)
        resolved = _resolve(schema.parsed, data)
        self.check(schema, resolved)
        return resolved

    @staticmethod
    def check(schema: EventSchema, data: Any) -> None:
        """Raise ``SchemaMismatchError`` naming the first field that does not fit."""
        if not isinstance(data, Mapping):
            raise SchemaMismatchError(f"{schema.name}: data must be an object")
        missing = [
            f["name"]
            for f in schema.parsed["fields"]
            if f["name"] not in data and "default" not in f
        ]
        if missing:
            raise SchemaMismatchError(
                f"{schema.name}: missing field {missing[0]!r}", field=missing[0]
            )
        unknown = sorted(set(data) - {f["name"] for f in schema.parsed["fields"]})
        if unknown:
            raise SchemaMismatchError(
                f"{schema.name}: unknown field {unknown[0]!r}", field=unknown[0]
            )
        try:
            validate(data, schema.parsed, raise_errors=True, strict=True)
        except fastavro.validation.ValidationError as exc:
            detail = "; ".join(str(e) for e in exc.errors) if exc.errors else str(exc)
            field = _field_of(detail, schema.name)
            raise SchemaMismatchError(
                f"{schema.name}: field {field!r} does not fit the schema: {detail}", field=field
            ) from exc


def _resolve(schema: Any, data: Any) -> Any:
    """``data`` as ``schema`` reads it (records, arrays, maps, a union's one record)."""
    if isinstance(schema, list):
        records = [b for b in schema if isinstance(b, dict) and b.get("type") == "record"]
        return _resolve(records[0], data) if len(records) == 1 and isinstance(data, dict) else data
    if not isinstance(schema, dict):
        return data
    kind = schema.get("type")
    if kind == "record" and isinstance(data, dict):
        out = {}
        for f in schema["fields"]:
            name = f["name"]
            if name in data:
                out[name] = _resolve(f["type"], data[name])
            elif "default" in f:
                out[name] = f["default"]
        return out
    if kind == "array" and isinstance(data, list):
        return [_resolve(schema["items"], item) for item in data]
    if kind == "map" and isinstance(data, dict):
        return {k: _resolve(schema["values"], v) for k, v in data.items()}
    return data


def _field_of(detail: str, schema_name: str) -> str:
    """``com.x.placed.total_cents is <..>`` or ``Field(com.x.Item.sku) is ..`` → the field path."""
    head = detail.split(" is ", 1)[0].strip()
    if head.startswith("Field(") and head.endswith(")"):
        head = head[6:-1]
    namespace = schema_name.rpartition(".")[0]
    for prefix in (schema_name + ".", namespace + "."):
        if head.startswith(prefix):
            return head[len(prefix) :]
    return head


# --- Schema Registry writer schemas and resolution ---------------------------------

AVRO_KIND = "AVRO"
JSON_KIND = "JSON"
PROTOBUF_KIND = "PROTOBUF"


@dataclass(frozen=True, eq=False)
class WriterSchema:
    """A schema a producer wrote with, as the registry holds it under ``id``; parsed once.

    ``kind`` is the registry's schema type (``AVRO``, ``JSON``, ``PROTOBUF``); ``name``
    the Avro full name or the JSON Schema ``title`` (the default event type), if any.
    """

    id: int
    kind: str
    name: str | None
    raw: Any
    """The schema as JSON (a dict for Avro records and JSON Schemas)."""
    parsed: Any = None
    """fastavro's parsed Avro schema (``None`` for other kinds)."""
    canonical: str | None = None
    """Avro's parsing canonical form: equal forms read alike without resolution."""

    @classmethod
    def parse(cls, schema_id: int, kind: str | None, text: str) -> WriterSchema:
        """Parse a registry schema (its type and its text); ``DecodeError`` if it does not."""
        kind = (kind or AVRO_KIND).upper()
        if kind == PROTOBUF_KIND:
            return cls(schema_id, kind, None, text)
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise DecodeError(f"registry schema {schema_id} is not JSON: {exc}") from exc
        if kind == JSON_KIND:
            title = raw.get("title") if isinstance(raw, dict) else None
            return cls(schema_id, kind, title if isinstance(title, str) else None, raw)
        try:
            parsed = fastavro.parse_schema(raw, _write_hint=True, _force=True)
        except (ValueError, TypeError, fastavro.schema.SchemaParseException) as exc:
            raise DecodeError(
                f"registry schema {schema_id} is not a valid Avro schema: {exc}"
            ) from exc
        name = parsed.get("name") if isinstance(parsed, dict) else None
        return cls(schema_id, kind, name, raw, parsed, to_parsing_canonical_form(parsed))


@dataclass(frozen=True, eq=False)
class Resolution:
    """How records of one writer schema are read as one reader schema, decided once.

    Identical schemas are read as written. When the schemas differ only in top-level
    fields (the writer has fields the reader lacks, the reader has fields with a plain
    default the writer lacks, every common field of the same type), the body is read
    as written and projected onto the reader's fields, which is what Avro resolution
    gives at the cost of a dict; any other difference goes through fastavro's
    resolution.
    """

    writer: Any
    reader: Any = None
    """The reader schema fastavro resolves to; ``None``: read as written."""
    fields: tuple[tuple[str, bool, Any], ...] | None = None
    """The projection: (name, from the writer, default) per reader field."""

    def read(self, body: bytes, what: str) -> Any:
        """Decode an Avro body as the reader schema reads it."""
        data = read_avro(body, self.writer, self.reader, what)
        if self.fields is None:
            return data
        return {name: data[name] if written else default for name, written, default in self.fields}


class Resolver:
    """Reads Avro written with a registry schema as the schema a route expects.

    Whether a writer resolves to a reader is decided once per (writer id, reader)
    pair with Avro's own compatibility rules and kept, so a record costs one dict
    lookup and the body decode (``Resolution``).
    """

    def __init__(self) -> None:
        self._pairs: dict[tuple[int, bytes | int], Resolution | SchemaIncompatibleError] = {}
        self._checker = ReaderWriterCompatibilityChecker()

    def resolution(self, writer: WriterSchema, reader: EventSchema | WriterSchema) -> Resolution:
        """How to read ``writer``'s records as ``reader``; raises ``SchemaIncompatibleError``
        naming the field when the writer does not resolve."""
        pair = (writer.id, reader.id if isinstance(reader, WriterSchema) else reader.fingerprint)
        found = self._pairs.get(pair)
        if found is None:
            found = self._decide(writer, reader)
            self._pairs[pair] = found
        if isinstance(found, SchemaIncompatibleError):
            raise SchemaIncompatibleError(found.message, field=found.field)
        return found

    def reader_for(self, writer: WriterSchema, reader: EventSchema | WriterSchema) -> Any:
        """The reader schema fastavro resolves to (``None``: no resolution by fastavro);
        raises ``SchemaIncompatibleError`` naming the field when the writer does not
        resolve (``ktb routes check`` asks only that)."""
        return self.resolution(writer, reader).reader

    def _decide(
        self, writer: WriterSchema, reader: EventSchema | WriterSchema
    ) -> Resolution | SchemaIncompatibleError:
        reader_canonical = (
            reader.canonical
            if isinstance(reader, WriterSchema)
            else to_parsing_canonical_form(reader.parsed)
        )
        if writer.canonical == reader_canonical:
            return Resolution(writer.parsed)
        reader_raw = reader.raw if isinstance(reader, WriterSchema) else reader.parsed
        try:
            result = self._checker.get_compatibility(
                _avro_schema(reader_raw), _avro_schema(writer.raw)
            )
        except (avro.errors.AvroException, ValueError, TypeError) as exc:
            return SchemaIncompatibleError(
                f"writer schema {writer.id} cannot be compared with {reader.name}: {exc}"
            )
        if result.compatibility is SchemaCompatibilityType.compatible:
            fields = _projection(writer.parsed, reader.parsed)
            if fields is not None:
                return Resolution(writer.parsed, None, fields)
            return Resolution(writer.parsed, reader.parsed)
        # The deepest location names the field; "/" is the record holding it.
        location = max(result.locations, key=lambda loc: (loc.count("/"), loc), default="")
        field = _field_at(reader_raw, location)
        kinds = ", ".join(sorted({i.value.replace("_", " ") for i in result.incompatibilities}))
        detail = "; ".join(sorted(result.messages))
        return SchemaIncompatibleError(
            f"writer schema {writer.id} ({writer.name}) does not resolve to {reader.name}: "
            f"field {field!r}: {kinds} ({detail})",
            field=field,
        )


PLAIN_DEFAULTS = frozenset({"null", "boolean", "int", "long", "float", "double", "string"})
"""Types whose JSON default is the value Avro resolution gives (no bytes, no records)."""


def _projection(writer: Any, reader: Any) -> tuple[tuple[str, bool, Any], ...] | None:
    """The reader's fields as a projection of the writer's record, or ``None`` when the
    two differ in more than top-level fields (resolution then goes through fastavro)."""
    if not (isinstance(writer, dict) and isinstance(reader, dict)):
        return None
    written = {f["name"]: f for f in writer.get("fields", ())}
    plan: list[tuple[str, bool, Any]] = []
    for f in reader.get("fields", ()):
        if f.get("aliases"):
            return None
        source = written.get(f["name"])
        if source is not None:
            if _type_text(source["type"]) != _type_text(f["type"]):
                return None
            plan.append((f["name"], True, None))
            continue
        kind = f["type"][0] if isinstance(f["type"], list) and f["type"] else f["type"]
        if "default" not in f or not isinstance(kind, str) or kind not in PLAIN_DEFAULTS:
            return None
        plan.append((f["name"], False, f["default"]))
    return tuple(plan)


def _type_text(schema: Any) -> str:
    """A field type as comparable text (fastavro's hints left out)."""
    return json.dumps(_without_hints(schema), sort_keys=True)


def _avro_schema(raw: Any) -> avro.schema.Schema:
    """``raw`` (fastavro's parse keeps the JSON shape, plus hints) as the avro library's."""
    return avro.schema.parse(json.dumps(_without_hints(raw)))


def _without_hints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_hints(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_without_hints(v) for v in value]
    return value


def _field_at(schema: Any, pointer: str) -> str:
    """The dotted field path a compatibility location (``/fields/2/type/fields/0``) names."""
    names: list[str] = []
    node = schema
    parts = [p for p in pointer.split("/") if p]
    for n, part in enumerate(parts):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            if n > 0 and parts[n - 1] == "fields" and isinstance(node, dict):
                names.append(str(node.get("name")))
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            break
    return ".".join(names) or "(schema)"


def read_avro(body: bytes, writer: Any, reader: Any, what: str) -> Any:
    """Decode an Avro body written with ``writer`` as ``reader`` (``None``: as written)."""
    try:
        return fastavro.schemaless_reader(io.BytesIO(body), writer, reader)
    except fastavro.read.SchemaResolutionError as exc:
        raise SchemaIncompatibleError(f"{what}: {exc}") from exc
    except AVRO_BODY_ERRORS as exc:
        raise DecodeError(f"Avro body does not decode as {what}: {exc}") from exc
