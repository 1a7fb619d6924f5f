"""Copies among dead letters, listing cursors and redrive chunks, in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge import dlq
from bridge.dlq import REDRIVE_CHUNK_BYTES, CopyIndex, Cursor, Letter, LetterRef, mark_copies
from bridge.dlq.redriving import _by_bytes
from bridge.errors import InvalidRequestError


def letter(partition: int, offset: int, origin: tuple[str, int | None, int | None]) -> Letter:
    topic, original_partition, original_offset = origin
    return Letter(
        dlq_topic="orders.dlq", partition=partition, offset=offset, timestamp_ms=0, key=None,
        value=b"x", headers=[], error_type="decode_error", error_message="bad",
        original_topic=topic, original_partition=original_partition,
        original_offset=original_offset, failed_at=None, redrive_count=0,
    )  # fmt: skip


def test_the_earliest_letter_of_a_record_stands_for_its_copies() -> None:
    letters = [
        letter(1, 4, ("orders", 2, 10)),  # a copy of 0:8, which sits earlier in DLQ order
        letter(0, 8, ("orders", 2, 10)),
        letter(0, 9, ("orders", 2, 11)),
        letter(0, 12, ("orders", 2, 10)),
        letter(0, 13, ("payments", 2, 10)),  # same partition and offset, another topic
    ]
    mark_copies(letters)
    assert [x.copy_of for x in letters] == [LetterRef(0, 8), None, None, LetterRef(0, 8), None]
    assert letters[0].summary()["copy_of"] == "0:8"


def test_letters_without_original_coordinates_are_never_copies() -> None:
    letters = [letter(0, 0, ("orders", None, None)), letter(0, 1, ("orders", None, None))]
    mark_copies(letters)
    assert [x.copy_of for x in letters] == [None, None]


def test_copies_of_letters_on_earlier_pages_point_at_them() -> None:
    page = [letter(0, 20, ("orders", 2, 10)), letter(0, 21, ("orders", 2, 11))]
    mark_copies(page, {("orders", 2, 10): LetterRef(0, 8), ("orders", 2, 11): LetterRef(0, 21)})
    assert [x.copy_of for x in page] == [LetterRef(0, 8), None]


def test_a_copy_index_stops_being_exact_past_its_bound() -> None:
    index = CopyIndex(cap=2)
    for n in range(2):
        index.add(letter(0, n, ("orders", 0, n)))
    index.add(letter(0, 5, ("orders", 0, 0)))  # a copy: nothing new to remember
    assert index.exact and index.first[("orders", 0, 0)] == LetterRef(0, 0)
    index.add(letter(0, 6, ("orders", 0, 6)))
    assert not index.exact and index.first == {}
    index.add(letter(0, 7, ("orders", 0, 7)))
    assert index.first == {}


def test_a_cursor_is_opaque_and_belongs_to_its_topic() -> None:
    cursor = Cursor("orders.dlq", {0: 15, 1: 30})
    text = cursor.encode()
    assert "orders" not in text and text.replace("-", "").replace("_", "").isalnum()
    assert Cursor.decode(text, "orders.dlq") == cursor
    too_far = Cursor("orders.dlq", {0: 2**63}).encode()
    for bad in ("", "!!", "bm90LWpzb24", Cursor("orders.dlq", {0: -1}).encode(), too_far):
        with pytest.raises(InvalidRequestError):
            Cursor.decode(bad, "orders.dlq")
    with pytest.raises(InvalidRequestError, match="belongs to"):
        Cursor.decode(text, "payments.dlq")


def test_redrive_chunks_are_bounded_in_bytes_with_at_least_one_letter_each() -> None:
    big = replace(letter(0, 0, ("orders", 0, 0)), value=b"x" * (REDRIVE_CHUNK_BYTES - 10))
    stub = replace(
        letter(0, 1, ("orders", 0, 1)), value=b"", error_type=dlq.TOO_LARGE_TO_COPY,
        original_size=REDRIVE_CHUNK_BYTES * 2,
    )  # fmt: skip
    small = letter(0, 2, ("orders", 0, 2))
    runs = _by_bytes([big, stub, small, small])
    assert [[x.offset for x in run] for run in runs] == [[0], [1], [2, 2]]
