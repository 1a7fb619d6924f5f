"""Avro schema catalog, single-object encoding and JSON validation.

Every ``.avsc`` under the schemas directory is one event type; the Avro full
name is the CloudEvents type (``com.example.order.placed``). Data on the wire is
Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint, little endian +
body) or JSON validated against the same schema.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate

from bridge.errors import ConfigError, DecodeError, SchemaMismatchError, UnknownSchemaError

MAGIC = b"\xc3\x01"
AVRO = "application/avro"
JSON = "application/json"


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
        except (EOFError, ValueError, IndexError, UnicodeDecodeError, OverflowError) as exc:
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
