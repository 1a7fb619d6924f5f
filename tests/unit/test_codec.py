"""Avro single-object encoding, fingerprints and schema validation."""

from __future__ import annotations

import pytest

from bridge.codec import MAGIC, SchemaCatalog
from bridge.errors import DecodeError, SchemaMismatchError, UnknownSchemaError
from tests.support import order_data

PLACED = "com.example.order.placed"


def test_round_trip(catalog: SchemaCatalog) -> None:
    body = catalog.encode(PLACED, order_data("o-1"))
    assert body[:2] == MAGIC
    assert body[2:10] == catalog.get(PLACED).fingerprint
    schema, data = catalog.decode(body)
    assert schema.name == PLACED
    assert data == order_data("o-1")


def test_fingerprint_matches_the_avro_reference_algorithm(catalog: SchemaCatalog) -> None:
    # CRC-64-AVRO as given in the Avro specification, little-endian on the wire.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)

    def crc(data: bytes) -> int:
        fp = empty
        for b in data:
            fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
        return fp

    from fastavro.schema import to_parsing_canonical_form

    schema = catalog.get(PLACED)
    canonical = to_parsing_canonical_form(schema.parsed).encode()
    assert schema.fingerprint == crc(canonical).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"total_cents": "many"}, "total_cents"),
        ({"currency": None}, "currency"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_mismatch_names_the_field(catalog: SchemaCatalog, change: dict, field: str) -> None:
    data = {**order_data("o-1"), **change}
    with pytest.raises(SchemaMismatchError) as err:
        catalog.encode(PLACED, data)
    assert err.value.field == field
    assert field in str(err.value)


def test_missing_field_is_named(catalog: SchemaCatalog) -> None:
    data = order_data("o-1")
    del data["payment_token"]
    with pytest.raises(SchemaMismatchError, match="payment_token"):
        catalog.encode(PLACED, data)


def test_not_avro_and_unknown_fingerprint(catalog: SchemaCatalog) -> None:
    with pytest.raises(DecodeError):
        catalog.decode(b"hello world, not avro")
    with pytest.raises(UnknownSchemaError):
        catalog.decode(MAGIC + b"\x00" * 8 + b"\x02")


def test_truncated_body_is_a_decode_error(catalog: SchemaCatalog) -> None:
    body = catalog.encode(PLACED, order_data("o-1"))
    with pytest.raises(DecodeError):
        catalog.decode(body[:14])


def test_wrong_type_for_fingerprint(catalog: SchemaCatalog) -> None:
    body = catalog.encode(PLACED, order_data("o-1"))
    with pytest.raises(SchemaMismatchError):
        catalog.decode(body, expected_type="com.example.order.cancelled")


def test_json_is_validated_against_the_schema(catalog: SchemaCatalog) -> None:
    assert catalog.from_json(PLACED, _json()) == order_data("x")
    with pytest.raises(SchemaMismatchError, match="order_id"):
        catalog.from_json(PLACED, b'{"customer_id": "c"}')
    with pytest.raises(DecodeError):
        catalog.from_json(PLACED, b"{not json")


def _json() -> bytes:
    import json

    return json.dumps(order_data("x")).encode()
