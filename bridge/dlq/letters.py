"""Dead letters read back: where a letter is, what it says, and which letters are copies.

``letter_of`` reads a record of a ``<topic>.dlq`` topic into a ``Letter``: its
``ktb_*`` headers (written by ``bridge.dlq.publisher``) read out through
``letter_header``, the record's own headers kept apart. CloudEvents headers go
through ``bridge.envelope.ce_attribute``, the one parser.

Dead-lettering is at-least-once: a record dead-lettered just before its bridge
died, its offset not committed yet, is dead-lettered again by the partition's
next owner. Such a letter has the original topic, partition and offset of an
earlier one; it is marked a copy of that letter (``copy_of``) and redrive never
republishes it: the earlier letter stands for the record.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import ConsumerRecord

from bridge.codec import SchemaCatalog
from bridge.dlq.publisher import (
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    LETTER_HEADERS,
    ORIGINAL_ERROR_MESSAGE,
    ORIGINAL_ERROR_TYPE,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_SIZE,
    ORIGINAL_TOPIC,
    REDRIVE_COUNT,
    SUFFIX,
    TOO_LARGE_TO_COPY,
)
from bridge.envelope import TENANT, ce_attribute, decode_data, headers_dict
from bridge.errors import BridgeError, InvalidRequestError

COPY_INDEX_MAX = 100_000
"""Original records a sequential reading remembers to find copies without a pass."""
VALUE_HEX_MAX = 4096
"""``dlq show`` prints at most this many bytes of an undecodable value as hex."""

Origin = tuple[str, int, int]
"""An original record's topic, partition and offset."""


@dataclass(frozen=True, order=True)
class LetterRef:
    """A dead letter's place in its DLQ topic."""

    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> LetterRef:
        """``OFFSET`` (partition 0) or ``PARTITION:OFFSET``."""
        part, sep, off = text.strip().partition(":")
        try:
            if sep:
                return cls(int(part), int(off))
            return cls(0, int(part))
        except ValueError:
            raise InvalidRequestError(
                f"{text!r} is not a dead-letter offset (OFFSET or PARTITION:OFFSET)"
            ) from None

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Redriven:
    """Where one redriven letter went (a record on ``ktb.redrives``)."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    topic: str
    partition: int
    offset: int
    redrive_count: int
    at: str


@dataclass(frozen=True)
class Cursor:
    """Where the next page of a DLQ listing starts: the next offset of every partition."""

    topic: str
    positions: Mapping[int, int]

    def encode(self) -> str:
        """The opaque form handed to callers (``next_cursor``)."""
        payload = {"t": self.topic, "p": {str(p): o for p, o in sorted(self.positions.items())}}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str, topic: str) -> Cursor:
        """A cursor from ``encode``; ``InvalidRequestError`` if it is not one of ``topic``."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload = json.loads(raw)
            positions = {int(p): int(o) for p, o in payload["p"].items()}
            owner = payload["t"]
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
            raise InvalidRequestError("the cursor is not one this listing returned") from None
        if owner != topic:
            raise InvalidRequestError(
                f"the cursor belongs to a listing of {owner!r}, not {topic!r}"
            )
        if any(not (0 <= p < 2**31 and 0 <= o < 2**63) for p, o in positions.items()):
            raise InvalidRequestError("the cursor is not one this listing returned")
        return cls(topic, positions)


@dataclass
class Letter:
    """One record of a DLQ topic with its letter headers read out."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    """The original record's headers (letter headers removed)."""
    error_type: str | None
    error_message: str | None
    original_topic: str
    original_partition: int | None
    original_offset: int | None
    failed_at: str | None
    redrive_count: int
    redriven: Redriven | None = None
    copy_of: LetterRef | None = None
    """The earlier letter of the same original record, if this one repeats it."""
    original_error_type: str | None = None
    """``too_large_to_copy`` letters: why the record failed."""
    original_error_message: str | None = None
    original_size: int | None = None

    @property
    def ref(self) -> LetterRef:
        """Where the letter is in its DLQ."""
        return LetterRef(self.partition, self.offset)

    @property
    def tenant(self) -> str | None:
        """The event's tenant (``ce_tenantid``), if it has one."""
        return ce_attribute(self.headers, TENANT)

    @property
    def holds_record(self) -> bool:
        """False for ``too_large_to_copy`` letters: the record is in its original topic."""
        return self.error_type != TOO_LARGE_TO_COPY

    @property
    def origin(self) -> Origin | None:
        """The original record's topic, partition and offset, when all are known."""
        if self.original_partition is None or self.original_offset is None:
            return None
        return (self.original_topic, self.original_partition, self.original_offset)

    @property
    def weight(self) -> int:
        """Bytes a redrive of the letter holds: its value, or the original it reads back."""
        return len(self.value or b"") + (0 if self.holds_record else self.original_size or 0)

    def summary(self) -> dict[str, Any]:
        """The letter as ``dlq list`` and ``GET /dlq`` show it."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "failed_at": self.failed_at,
            "redrive_count": self.redrive_count,
            "event_id": ce_attribute(self.headers, "id"),
            "event_type": ce_attribute(self.headers, "type"),
            "key": _text(self.key),
            "redriven": asdict(self.redriven) if self.redriven else None,
            "copy_of": str(self.copy_of) if self.copy_of else None,
            "record_in_letter": self.holds_record,
            "original_error_type": self.original_error_type,
            "original_error_message": self.original_error_message,
            "original_size": self.original_size,
        }

    def detail(self, catalog: SchemaCatalog, original: Original | None = None) -> dict[str, Any]:
        """Everything about the letter, with its data decoded when possible (``dlq show``).

        ``original``: for a ``too_large_to_copy`` letter, the record read back from
        its original topic; its headers and data are shown.
        """
        out = self.summary()
        out["timestamp"] = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat()
        headers, value = self.headers, self.value
        if original is not None:
            out["original_record"] = original.where()
            if original.record is not None:
                headers = own_headers(original.record.headers)
                value = original.record.value
        out["headers"] = headers_dict(headers)
        if not self.holds_record and (original is None or original.record is None):
            return out
        out["value_size"] = len(value) if value is not None else None
        type_name = ce_attribute(headers, "type")
        try:
            if not type_name or value is None:
                raise BridgeError("no ce_type header or no value")
            out["data"] = decode_data(
                catalog, type_name, ce_attribute(headers, "datacontenttype"), value
            )
        except BridgeError as exc:
            out["data_error"] = exc.message
            out["value_hex"] = value[:VALUE_HEX_MAX].hex() if value is not None else None
            out["value_hex_truncated"] = value is not None and len(value) > VALUE_HEX_MAX
        return out


@dataclass
class Original:
    """The record a ``too_large_to_copy`` letter points at, read back from its topic."""

    topic: str
    partition: int
    offset: int
    record: ConsumerRecord[bytes, bytes] | None
    problem: str | None = None
    """Why ``record`` is None (beyond retention, another event at that offset)."""

    def where(self) -> dict[str, Any]:
        """Coordinates and whether the record was found."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "found": self.record is not None,
            "problem": self.problem,
        }


def check_dlq_topic(dlq_topic: str) -> None:
    """``InvalidRequestError`` unless ``dlq_topic`` names a dead-letter topic."""
    if not dlq_topic.endswith(SUFFIX):
        raise InvalidRequestError(f"{dlq_topic!r} is not a dead-letter topic (<topic>.dlq)")


def letter_header(headers: Iterable[tuple[str, bytes]], name: str) -> bytes | None:
    """The value of a letter's ``ktb_*`` header ``name`` (the last one), if it has one."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def own_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The record's own headers: every header but the ones a dead letter adds."""
    return [(k, v) for k, v in headers if k not in LETTER_HEADERS]


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None


def _int(raw: bytes | None) -> int | None:
    text = _text(raw)
    return int(text) if text is not None and text.strip().lstrip("-").isdigit() else None


def letter_of(record: Any) -> Letter:
    """Read a DLQ consumer record."""
    headers = list(record.headers)
    topic = _text(letter_header(headers, ORIGINAL_TOPIC))
    if not topic and record.topic.endswith(SUFFIX):
        topic = record.topic[: -len(SUFFIX)]
    return Letter(
        dlq_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        headers=own_headers(headers),
        error_type=_text(letter_header(headers, ERROR_TYPE)),
        error_message=_text(letter_header(headers, ERROR_MESSAGE)),
        original_topic=topic or "",
        original_partition=_int(letter_header(headers, ORIGINAL_PARTITION)),
        original_offset=_int(letter_header(headers, ORIGINAL_OFFSET)),
        failed_at=_text(letter_header(headers, FAILED_AT)),
        redrive_count=_int(letter_header(headers, REDRIVE_COUNT)) or 0,
        original_error_type=_text(letter_header(headers, ORIGINAL_ERROR_TYPE)),
        original_error_message=_text(letter_header(headers, ORIGINAL_ERROR_MESSAGE)),
        original_size=_int(letter_header(headers, ORIGINAL_SIZE)),
    )


def mark_copies(
    letters: Sequence[Letter], earliest: Mapping[Origin, LetterRef] | None = None
) -> None:
    """Set ``copy_of`` on every letter that repeats an earlier letter's original record.

    ``earliest``: the first letter of each original record in the whole DLQ; by
    default the first among ``letters``.
    """
    first: dict[Origin, LetterRef] = dict(earliest or {})
    for letter in sorted(letters, key=lambda x: x.ref):
        origin = letter.origin
        if origin is None:
            continue
        found = first.setdefault(origin, letter.ref)
        letter.copy_of = found if found < letter.ref else None


class CopyIndex:
    """The first letter of each original record met by a reading from the DLQ's start.

    Bounded: past ``COPY_INDEX_MAX`` records it is no longer exact, and copies are
    found by a streaming pass instead.
    """

    def __init__(self, cap: int = COPY_INDEX_MAX) -> None:
        self.first: dict[Origin, LetterRef] = {}
        self.exact = True
        self.cap = cap

    def add(self, letter: Letter) -> None:
        """Note a letter read in DLQ order."""
        origin = letter.origin
        if not self.exact or origin is None or origin in self.first:
            return
        if len(self.first) >= self.cap:
            self.exact = False
            self.first.clear()
            return
        self.first[origin] = letter.ref
