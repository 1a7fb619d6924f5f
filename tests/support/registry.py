"""A Schema Registry for unit tests, and the registry's wire format by hand.

``FlakyClient`` is confluent-kafka's in-memory mock client (unit tests only: the
integration tests use the real registry) that fails its next lookups on demand.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._async.mock_schema_registry_client import (
    AsyncMockSchemaRegistryClient,
)

from bridge.codec import SchemaCatalog

PLACED = "com.example.order.placed"


class FlakyClient(AsyncMockSchemaRegistryClient):
    """The mock registry; its next schema lookups raise ``failures``, in order."""

    def __init__(self) -> None:
        super().__init__({"url": "mock://"})
        self.failures: list[Exception] = []
        self.lookups = 0

    async def get_schema(self, schema_id: int, *args: Any, **kw: Any) -> Schema:
        """Count the lookup; fail it with the next of ``failures`` if there is one."""
        self.lookups += 1
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        return await super().get_schema(schema_id, *args, **kw)


def placed_schema(catalog: SchemaCatalog) -> dict[str, Any]:
    """The local ``order.placed`` schema as JSON: what a producer on v1 registers."""
    source = catalog.get(PLACED).source
    assert source is not None
    schema: dict[str, Any] = json.loads(source.read_text())
    return schema


def v2_added_field(catalog: SchemaCatalog) -> dict[str, Any]:
    """``order.placed`` v2: a field added with a default."""
    schema = placed_schema(catalog)
    schema["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None})
    return schema


def framed(schema_id: int, body: bytes) -> bytes:
    """Schema Registry framing: magic byte 0, the schema id big-endian, the body."""
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def avro_body(schema: dict[str, Any], data: dict[str, Any]) -> bytes:
    """``data`` as an Avro body of ``schema`` (no framing)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), data)
    return buf.getvalue()
