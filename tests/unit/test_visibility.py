"""What a visibility query may carry, and how Temporal's refusals reach an API caller."""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import Annotated

import pytest
from pydantic import StringConstraints, TypeAdapter, ValidationError
from temporalio.service import RPCError, RPCStatusCode

from bridge.api import lookup
from bridge.api.models import StructuredEvent
from bridge.api.problems import Problem
from bridge.temporal import visibility

CONTROL = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cc"]
SERVER_TEXT = "ListWorkflowExecutions operation failed.: SQL logic error: unrecognized token"


def test_every_control_character_quote_and_backslash_is_refused():
    assert len(CONTROL) == 65  # U+0000-U+001F and U+007F-U+009F
    for char in [*CONTROL, "'", '"', "\\"]:
        for value in (char, f"a{char}", f"{char}b", f"a{char}b"):
            assert not visibility.is_safe(value), repr(value)
            with pytest.raises(visibility.UnsafeValueError):
                visibility.literal(value)


def test_over_long_values_are_refused():
    assert visibility.is_safe("k" * visibility.MAX_CHARS)
    assert not visibility.is_safe("k" * (visibility.MAX_CHARS + 1))
    with pytest.raises(visibility.UnsafeValueError, match="longer than"):
        visibility.literal("k" * 2000)


def test_ordinary_values_are_written_as_literals():
    for value in ("", "o-1", "order-acme/42", "ünïcødé 😀", "a b%_*;--/*", "\u200b\u2028"):
        assert visibility.is_safe(value)
        assert visibility.literal(value) == f"'{value}'"


def test_the_api_pattern_is_the_same_rule_in_the_regex_engine_the_api_uses():
    # pydantic checks `pattern` with its own engine (Rust regex): pin that it agrees
    # with is_safe on every character of the first planes (surrogates aside).
    checked = TypeAdapter(Annotated[str, StringConstraints(pattern=visibility.PATTERN)])
    for code in [*range(0, 0xD800), *range(0xE000, 0x10000, 7), 0x1F600, 0x10FFFF]:
        value = f"a{chr(code)}b"
        try:
            checked.validate_python(value)
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == visibility.is_safe(value), hex(code)
    # A trailing newline must not slip past `$` (it would in Python's `re.match`).
    with pytest.raises(ValidationError):
        checked.validate_python("key\n")


def test_the_api_refuses_event_ids_it_could_not_look_up():
    base = {"type": "t", "data": {}}
    assert StructuredEvent.model_validate({**base, "id": "evt-1"}).id == "evt-1"
    for bad in ("\x00", "a'b", "a\\b", "a\x7fb"):
        with pytest.raises(ValidationError):
            StructuredEvent.model_validate({**base, "id": bad})


def test_lookup_literal_is_a_422_problem():
    with pytest.raises(Problem) as raised:
        lookup.visibility_query(key="\x00")
    assert raised.value.status == 422
    with pytest.raises(Problem):
        lookup.visibility_query(event_id="e" * 2000)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (RPCStatusCode.INVALID_ARGUMENT, 422),
        (RPCStatusCode.OUT_OF_RANGE, 422),
        (RPCStatusCode.UNAVAILABLE, 503),
        (RPCStatusCode.DEADLINE_EXCEEDED, 503),
        (RPCStatusCode.RESOURCE_EXHAUSTED, 503),
        (RPCStatusCode.INTERNAL, 503),
        (RPCStatusCode.UNKNOWN, 503),
    ],
)
async def test_temporal_errors_are_answered_without_the_server_text(code, status, caplog):
    async def failing() -> None:
        raise RPCError(SERVER_TEXT, code, b"")

    with caplog.at_level(logging.WARNING, "ktb.api.temporal"), pytest.raises(Problem) as raised:
        await lookup.call(failing())
    problem = raised.value
    assert problem.status == status
    assert "SQL" not in str(problem.detail) and "ListWorkflow" not in str(problem.detail)
    assert not any("SQL" in str(v) for v in problem.extra.values())
    assert SERVER_TEXT in caplog.text  # the operator still sees it


def test_page_tokens_round_trip_and_foreign_ones_are_refused():
    for token in (b"\x00", b'{"StartTime":"2026-01-01T00:00:00Z","RunID":"r"}', bytes(range(256))):
        assert lookup.decode_page_token(lookup.encode_page_token(token)) == token
    issued = lookup.encode_page_token(b"opaque")
    for foreign in ("AAAA", "Z2FyYmFnZQ==", issued[:-4] + "AAAA", "%%%", "AQ"):
        with pytest.raises(Problem) as raised:
            lookup.decode_page_token(foreign)
        assert raised.value.status == 422
