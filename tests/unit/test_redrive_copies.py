"""Copies among dead letters: the same original record dead-lettered more than once."""

from __future__ import annotations

from bridge.redrive import DeadLetter, LetterRef, mark_copies


def letter(partition: int, offset: int, origin: tuple[str, int | None, int | None]) -> DeadLetter:
    topic, original_partition, original_offset = origin
    return DeadLetter(
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
