"""Dead letters: list, show and redrive the records on ``<topic>.dlq``.

Redrive republishes a dead letter's original record (key, value and headers,
without the ``ktb_*`` letter headers) to its original topic with
``ktb_redrive_count`` one higher and ``ktb_redrive_of`` naming the letter. The
live bridge then processes it like any record; if it fails again it is
dead-lettered again with that count, and redrive refuses letters whose count
has reached the configured maximum. A ``too_large_to_copy`` letter holds no
record: redrive and ``dlq show`` read the original from its topic at the
letter's coordinates (while retention keeps it there).

Every redrive is marked on ``ktb.redrives`` (key: the DLQ topic), so a listing
shows which letters were redriven and where to, and redriving a DLQ twice does
not republish the same letter twice unless asked to. The republished records
and their marks are written in one Kafka transaction, whose transactional id
is derived from the DLQ topic (``ktb-redrive-<dlq topic>``): two redrives of
one DLQ (CLI and API, or a retry after a crash) fence each other, and each
re-reads the marks after fencing the other, inside its transaction, so a
letter is republished once. The bridge reads ``read_committed``: an aborted
redrive leaves nothing it acts on.

Dead-lettering is at-least-once: a record dead-lettered just before its bridge
died, its offset not committed yet, is dead-lettered again by the partition's
next owner. Such a letter has the original topic, partition and offset of an
earlier one; it is listed as a copy of that letter (``copy_of``) and redrive
never republishes it: the earlier letter stands for the record.

Listings are pages: at most ``limit`` letters, at most ``scan_limit`` records
read for them, and an opaque cursor (the next offset of every partition) to
go on from. The redrive marks and copies of a page's letters come from
streaming passes that keep only what concerns the page, so the memory of a
request does not grow with the topics. Redrive of everything matching a filter
goes page by page, one transaction per page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced
from aiokafka.structs import ConsumerRecord

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.dlq import publisher as dlq
from bridge.envelope import TENANT, ce_attribute, decode_data, headers_dict
from bridge.errors import BridgeError, InvalidRequestError, TransientError
from bridge.kafka import ensure_topics, stop_consumer
from bridge.replay.runner import topic_partitions
from bridge.settings import Settings

log = logging.getLogger("ktb.redrive")

REDRIVES_TOPIC = "ktb.redrives"
READ_TIMEOUT_S = 30.0
"""A read that makes no progress for this long fails (``TransientError``)."""
PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000
SCAN_PER_LETTER = 10
MIN_SCAN = 1000
"""A page reads at most ``max(MIN_SCAN, SCAN_PER_LETTER * limit)`` records."""
REDRIVE_CHUNK = 200
REDRIVE_CHUNK_BYTES = 16 * 1024 * 1024
"""A redrive transaction carries at most this many letters and record bytes."""
REF_CHUNK = 32
"""Letters named by offset are read this many at a time (their size is not known before)."""
TRANSACTION_TIMEOUT_MS = 30_000
"""A redrive that dies mid-transaction holds back ``read_committed`` readers of the
partitions it wrote to until the broker aborts it after this long (or until the
next redrive of the same DLQ fences it)."""
FENCED_ATTEMPTS = 8
FETCH_PARTITION_BYTES = 1024 * 1024
FETCH_BYTES = 4 * 1024 * 1024
COPY_INDEX_MAX = 100_000
"""Original records a sequential reading remembers to find copies without a pass."""
VALUE_HEX_MAX = 4096
"""``dlq show`` prints at most this many bytes of an undecodable value as hex."""
DEFAULT_MAX_REQUEST = 1024 * 1024

Origin = tuple[str, int, int]


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
class DeadLetter:
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
        return self.error_type != dlq.TOO_LARGE_TO_COPY

    @property
    def origin(self) -> Origin | None:
        """The original record's topic, partition and offset, when all are known."""
        if self.original_partition is None or self.original_offset is None:
            return None
        return (self.original_topic, self.original_partition, self.original_offset)

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
                headers = _own_headers(original.record.headers)
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


@dataclass
class LetterPage:
    """One page of a DLQ listing."""

    letters: list[DeadLetter]
    next_cursor: Cursor | None
    """Where the next page starts; None once every partition was read to its end."""
    scanned: int
    """Records read for this page (the filters may have matched fewer)."""


@dataclass
class RedriveReport:
    """What one redrive did."""

    dlq_topic: str
    selected: int = 0
    redriven: list[Redriven] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    """Letters at the redrive maximum (or without an original topic), with the reason."""
    already: list[str] = field(default_factory=list)
    """Letters skipped because an earlier redrive republished them."""
    copies: list[str] = field(default_factory=list)
    """Letters skipped as copies of an earlier letter of the same record."""

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "dlq_topic": self.dlq_topic,
            "selected": self.selected,
            "redriven": [asdict(r) for r in self.redriven],
            "refused": self.refused,
            "already_redriven": self.already,
            "copies": self.copies,
        }


def _find(headers: Iterable[tuple[str, bytes]], name: str) -> bytes | None:
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None


def _int(raw: bytes | None) -> int | None:
    text = _text(raw)
    return int(text) if text is not None and text.strip().lstrip("-").isdigit() else None


def _own_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers if k not in dlq.LETTER_HEADERS]


def letter_of(record: Any) -> DeadLetter:
    """Read a DLQ consumer record."""
    headers = list(record.headers)
    topic = _text(_find(headers, dlq.ORIGINAL_TOPIC))
    if not topic and record.topic.endswith(dlq.SUFFIX):
        topic = record.topic[: -len(dlq.SUFFIX)]
    return DeadLetter(
        dlq_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        headers=_own_headers(headers),
        error_type=_text(_find(headers, dlq.ERROR_TYPE)),
        error_message=_text(_find(headers, dlq.ERROR_MESSAGE)),
        original_topic=topic or "",
        original_partition=_int(_find(headers, dlq.ORIGINAL_PARTITION)),
        original_offset=_int(_find(headers, dlq.ORIGINAL_OFFSET)),
        failed_at=_text(_find(headers, dlq.FAILED_AT)),
        redrive_count=_int(_find(headers, dlq.REDRIVE_COUNT)) or 0,
        original_error_type=_text(_find(headers, dlq.ORIGINAL_ERROR_TYPE)),
        original_error_message=_text(_find(headers, dlq.ORIGINAL_ERROR_MESSAGE)),
        original_size=_int(_find(headers, dlq.ORIGINAL_SIZE)),
    )


def mark_copies(
    letters: Sequence[DeadLetter], earliest: Mapping[Origin, LetterRef] | None = None
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

    def add(self, letter: DeadLetter) -> None:
        """Note a letter read in DLQ order."""
        origin = letter.origin
        if not self.exact or origin is None or origin in self.first:
            return
        if len(self.first) >= self.cap:
            self.exact = False
            self.first.clear()
            return
        self.first[origin] = letter.ref


# --- reading ----------------------------------------------------------------------------------


def _check_dlq_topic(dlq_topic: str) -> None:
    if not dlq_topic.endswith(dlq.SUFFIX):
        raise InvalidRequestError(f"{dlq_topic!r} is not a dead-letter topic (<topic>.dlq)")


@contextlib.asynccontextmanager
async def _reader(settings: Settings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less ``read_committed`` consumer with bounded fetches."""
    consumer: AIOKafkaConsumer = kafka.consumer(
        settings,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        fetch_max_bytes=FETCH_BYTES,
    )
    try:
        await kafka.start(consumer, settings)
    except KafkaError as exc:
        raise TransientError(f"cannot read {topic}: {exc}") from exc
    try:
        yield consumer
    except KafkaError as exc:
        raise TransientError(f"cannot read {topic}: {exc}") from exc
    finally:
        await stop_consumer(consumer)


async def _batches(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    timeout: float = READ_TIMEOUT_S,
) -> AsyncGenerator[list[ConsumerRecord[bytes, bytes]], None]:
    """The records of ``tp`` in ``[start, end)``, in offset order, a fetch at a time.

    ``TransientError`` when the position stays put for ``timeout`` seconds.
    """
    consumer.assign([tp])
    consumer.seek(tp, start)
    deadline = time.monotonic() + timeout
    position = start
    while position < end:
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=500)
        records = [r for r in batch.get(tp, []) if r.offset < end]
        if records:
            yield records
        moved = await consumer.position(tp)
        if moved > position:
            position, deadline = moved, time.monotonic() + timeout
        elif time.monotonic() > deadline:
            raise TransientError(f"timed out reading {tp.topic}[{tp.partition}]")


@dataclass
class _MarkReading:
    """Redrive marks of some letters, read up to ``positions`` of ``ktb.redrives``."""

    refs: frozenset[LetterRef]
    marks: dict[LetterRef, Redriven] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)


class _MarkReader:
    """Reads the redrive marks of one DLQ from ``ktb.redrives``; its clients live until ``close``.

    A redrive reads the marks inside each transaction, where a concurrent redrive may
    fence it: started clients keep that read to a few round trips.
    """

    def __init__(self, settings: Settings, dlq_topic: str) -> None:
        self.settings = settings
        self.key = dlq_topic.encode()
        self.partitions: list[int] = []
        self.consumer: AIOKafkaConsumer | None = None
        self.watermarks: AIOKafkaConsumer | None = None

    async def close(self) -> None:
        """Stop the clients."""
        for consumer in (self.consumer, self.watermarks):
            if consumer is not None:
                await stop_consumer(consumer)
        self.consumer = self.watermarks = None

    async def _started(self, isolation_level: str) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = kafka.consumer(
            self.settings,
            isolation_level=isolation_level,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            fetch_max_bytes=FETCH_BYTES,
        )
        await kafka.start(consumer, self.settings)
        return consumer

    async def read(self, reading: _MarkReading, *, settled: bool = False) -> _MarkReading:
        """Go on reading the marks of ``reading.refs`` from where ``reading`` stopped.

        ``settled``: read up to the high watermark as of now, waiting until every
        transaction below it has ended, so that a redrive committed before this call
        is seen; otherwise up to the last stable offset.
        """
        if not reading.refs:
            return reading
        if not self.partitions:
            try:
                self.partitions = await topic_partitions(self.settings, REDRIVES_TOPIC)
            except InvalidRequestError:
                return reading  # nothing was ever redriven
        try:
            if self.consumer is None:
                self.consumer = await self._started("read_committed")
            tps = [TopicPartition(REDRIVES_TOPIC, p) for p in self.partitions]
            if settled:
                if self.watermarks is None:
                    self.watermarks = await self._started("read_uncommitted")
                ends = await self.watermarks.end_offsets(tps)
            else:
                ends = await self.consumer.end_offsets(tps)
            for tp in tps:
                await self._read(reading, tp, ends[tp], settled)
        except KafkaError as exc:
            raise TransientError(f"cannot read {REDRIVES_TOPIC}: {exc}") from exc
        return reading

    async def _read(
        self, reading: _MarkReading, tp: TopicPartition, end: int, settled: bool
    ) -> None:
        assert self.consumer is not None
        start = reading.positions.get(tp.partition, 0)
        if start >= end:
            return
        # Settled: wait out open transactions (a crashed one until the broker aborts it).
        timeout = READ_TIMEOUT_S + (TRANSACTION_TIMEOUT_MS / 1000 + 15 if settled else 0)
        async for records in _batches(self.consumer, tp, start, end, timeout):
            for record in records:
                if record.key != self.key or record.value is None:
                    continue
                try:
                    mark = Redriven(**json.loads(record.value))
                except (ValueError, TypeError):
                    continue  # not a redrive record; the log is shared and append-only
                ref = LetterRef(mark.dlq_partition, mark.dlq_offset)
                if ref in reading.refs:
                    reading.marks[ref] = mark
        reading.positions[tp.partition] = end


async def _read_marks(
    settings: Settings, dlq_topic: str, refs: Iterable[LetterRef]
) -> dict[LetterRef, Redriven]:
    """The latest redrive mark of each of ``refs``, by a streaming pass over ``ktb.redrives``."""
    reader = _MarkReader(settings, dlq_topic)
    try:
        return (await reader.read(_MarkReading(frozenset(refs)))).marks
    finally:
        await reader.close()


async def _earliest(
    settings: Settings, dlq_topic: str, origins: set[Origin], tenant: str | None
) -> dict[Origin, LetterRef]:
    """The first letter of each of ``origins`` in DLQ order, by a streaming pass."""
    found: dict[Origin, LetterRef] = {}
    if not origins:
        return found
    partitions = await topic_partitions(settings, dlq_topic)
    async with _reader(settings, dlq_topic) as consumer:
        tps = [TopicPartition(dlq_topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            if starts[tp] >= ends[tp]:
                continue
            async with contextlib.aclosing(_batches(consumer, tp, starts[tp], ends[tp])) as it:
                async for records in it:
                    for record in records:
                        letter = letter_of(record)
                        origin = letter.origin
                        mine = tenant is None or letter.tenant == tenant
                        if mine and origin in origins and origin not in found:
                            found[origin] = letter.ref
                    if len(found) == len(origins):
                        return found
    return found


async def _settle(
    settings: Settings,
    dlq_topic: str,
    letters: list[DeadLetter],
    tenant: str | None,
    index: CopyIndex | None = None,
    marks: bool = True,
) -> None:
    """Set ``copy_of`` (and ``redriven`` if ``marks``) on ``letters``."""
    origins = {x.origin for x in letters if x.origin is not None}
    if index is not None and index.exact and origins <= index.first.keys():
        earliest = {o: index.first[o] for o in origins}
    else:
        earliest = await _earliest(settings, dlq_topic, origins, tenant)
    mark_copies(letters, earliest)
    if marks:
        found = await _read_marks(settings, dlq_topic, (x.ref for x in letters))
        for letter in letters:
            letter.redriven = found.get(letter.ref)


def _for_listing(letter: DeadLetter) -> None:
    """Drop what a listing does not show: the value and all headers but the event's own."""
    letter.value = None
    letter.headers = [(k, v) for k, v in letter.headers if k.lower() in dlq.KEPT_HEADERS]


async def letter_page(
    settings: Settings,
    dlq_topic: str,
    *,
    cursor: Cursor | None = None,
    limit: int = PAGE_LIMIT,
    error_type: str | None = None,
    tenant: str | None = None,
    scan_limit: int | None = None,
    keep_values: bool = False,
    max_bytes: int | None = None,
    marks: bool = True,
    index: CopyIndex | None = None,
) -> LetterPage:
    """One page of a DLQ's letters in partition/offset order, from ``cursor`` on.

    At most ``limit`` letters, ``scan_limit`` records read (default
    ``max(MIN_SCAN, SCAN_PER_LETTER * limit)``) and, with ``keep_values``,
    ``max_bytes`` of values (the first letter always fits). Without
    ``keep_values`` the letters carry no value and only the event's CloudEvents
    headers (a listing shows no more).
    ``index``, carried from page to page of a reading from the start, spares
    the streaming pass that finds copies.
    """
    _check_dlq_topic(dlq_topic)
    if limit < 1:
        raise InvalidRequestError("a page holds at least one letter")
    scan_limit = scan_limit or max(MIN_SCAN, SCAN_PER_LETTER * limit)
    partitions = await topic_partitions(settings, dlq_topic)
    letters: list[DeadLetter] = []
    scanned = size = 0
    async with _reader(settings, dlq_topic) as consumer:
        tps = [TopicPartition(dlq_topic, p) for p in partitions]
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        starts = await consumer.beginning_offsets(tps)
        given = cursor.positions if cursor else {}
        positions = {tp.partition: max(starts[tp], given.get(tp.partition, 0)) for tp in tps}
        full = False
        for tp in tps:
            p = tp.partition
            if full or positions[p] >= ends[p]:
                continue
            async with contextlib.aclosing(_batches(consumer, tp, positions[p], ends[p])) as it:
                async for records in it:
                    for record in records:
                        positions[p] = record.offset + 1
                        scanned += 1
                        letter = letter_of(record)
                        if tenant is None or letter.tenant == tenant:
                            if index is not None:
                                index.add(letter)
                            if error_type is None or letter.error_type == error_type:
                                if not keep_values:
                                    _for_listing(letter)
                                letters.append(letter)
                                size += _weight(letter)
                        full = (
                            len(letters) >= limit
                            or scanned >= scan_limit
                            or (max_bytes is not None and size >= max_bytes)
                        )
                        if full:
                            break
                    if full:
                        break
            if not full:
                positions[p] = ends[p]
    done = all(positions[p] >= ends[p] for p in positions)
    await _settle(settings, dlq_topic, letters, tenant, index, marks)
    return LetterPage(letters, None if done else Cursor(dlq_topic, positions), scanned)


async def iter_letters(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    tenant: str | None = None,
    limit: int = MAX_PAGE_LIMIT,
    keep_values: bool = False,
) -> AsyncIterator[list[DeadLetter]]:
    """Every letter (filtered), a page at a time, each with its latest redrive if any."""
    cursor: Cursor | None = None
    index = CopyIndex()
    while True:
        page = await letter_page(
            settings, dlq_topic, cursor=cursor, limit=limit, error_type=error_type,
            tenant=tenant, keep_values=keep_values, index=index,
        )  # fmt: skip
        if page.letters:
            yield page.letters
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def dead_letters(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    refs: Sequence[LetterRef] = (),
    tenant: str | None = None,
) -> list[DeadLetter]:
    """The letters of a DLQ topic, filtered, each with its latest redrive if any.

    All of them in one list: for small topics and tests; listings page
    (``letter_page``, ``iter_letters``). Unknown ``refs`` raise ``InvalidRequestError``.
    """
    if refs:
        letters = await letters_at(settings, dlq_topic, refs, tenant=tenant)
        return [x for x in letters if error_type is None or x.error_type == error_type]
    out: list[DeadLetter] = []
    async for page in iter_letters(
        settings, dlq_topic, error_type=error_type, tenant=tenant, keep_values=True
    ):
        out.extend(page)
    return out


def _runs(offsets: Sequence[int], gap: int = 100) -> list[tuple[int, int]]:
    """Sorted offsets as ``[start, end)`` ranges worth reading in one go."""
    runs: list[tuple[int, int]] = []
    for offset in offsets:
        if runs and offset - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], offset + 1)
        else:
            runs.append((offset, offset + 1))
    return runs


async def letters_at(
    settings: Settings,
    dlq_topic: str,
    refs: Sequence[LetterRef],
    *,
    tenant: str | None = None,
    keep_values: bool = True,
    settle: bool = True,
    marks: bool = True,
) -> list[DeadLetter]:
    """The letters at ``refs``, in DLQ order; ``InvalidRequestError`` naming any missing.

    A letter of another tenant than ``tenant`` is missing, exactly as an absent one.
    """
    _check_dlq_topic(dlq_topic)
    partitions = set(await topic_partitions(settings, dlq_topic))
    wanted_set = set(refs)
    wanted = sorted(wanted_set)
    found: dict[LetterRef, DeadLetter] = {}
    async with _reader(settings, dlq_topic) as consumer:
        tps = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        for p in sorted({r.partition for r in wanted} & partitions):
            offsets = [r.offset for r in wanted if r.partition == p and r.offset < ends[p]]
            for start, end in _runs(offsets):
                async for records in _batches(consumer, TopicPartition(dlq_topic, p), start, end):
                    for record in records:
                        ref = LetterRef(p, record.offset)
                        if ref not in wanted_set:
                            continue
                        letter = letter_of(record)
                        if tenant is None or letter.tenant == tenant:
                            if not keep_values:
                                _for_listing(letter)
                            found[ref] = letter
    missing = [str(r) for r in wanted if r not in found]
    if missing:
        raise InvalidRequestError(
            f"{dlq_topic} has no dead letter at {', '.join(missing)} (PARTITION:OFFSET)"
        )
    letters = [found[r] for r in wanted]
    if settle:
        await _settle(settings, dlq_topic, letters, tenant, marks=marks)
    return letters


async def read_original(settings: Settings, letter: DeadLetter) -> Original:
    """The record a ``too_large_to_copy`` letter points at, from its original topic."""
    topic, partition, offset = (
        letter.original_topic,
        letter.original_partition,
        letter.original_offset,
    )
    if not topic or partition is None or offset is None:
        return Original(
            topic, partition or 0, offset or 0, None, "no original coordinates recorded"
        )
    where = f"{topic}[{partition}]@{offset}"
    try:
        partitions = await topic_partitions(settings, topic)
    except InvalidRequestError:
        return Original(topic, partition, offset, None, f"topic {topic!r} no longer exists")
    if partition not in partitions:
        return Original(topic, partition, offset, None, f"{topic} has no partition {partition}")
    record = None
    async with _reader(settings, topic) as consumer:
        tp = TopicPartition(topic, partition)
        end = (await consumer.end_offsets([tp]))[tp]
        if offset < end:
            async for records in _batches(consumer, tp, offset, offset + 1):
                record = next((r for r in records if r.offset == offset), record)
    if record is None:
        return Original(topic, partition, offset, None, f"{where} is gone (beyond retention)")
    # The letter names its record by key and event id (a letter that had to drop
    # them names it by coordinates alone).
    letter_id = ce_attribute(letter.headers, "id")
    if (letter.key is not None and record.key != letter.key) or (
        letter_id is not None and ce_attribute(record.headers, "id") != letter_id
    ):
        return Original(
            topic, partition, offset, None, f"{where} holds another record than the letter names"
        )
    return Original(topic, partition, offset, record)


async def show(
    settings: Settings,
    dlq_topic: str,
    ref: LetterRef,
    catalog: SchemaCatalog,
    *,
    tenant: str | None = None,
) -> dict[str, Any]:
    """One letter in full (``dlq show``); a ``too_large_to_copy`` one with its original."""
    (letter,) = await letters_at(settings, dlq_topic, [ref], tenant=tenant)
    original = None if letter.holds_record else await read_original(settings, letter)
    return letter.detail(catalog, original)


# --- redrive ----------------------------------------------------------------------------------


def transactional_id(dlq_topic: str) -> str:
    """The transactional id of every redrive of ``dlq_topic``: they fence each other."""
    return f"ktb-redrive-{dlq_topic}"


@dataclass
class _Outgoing:
    """One letter to republish: the record as it goes out."""

    letter: DeadLetter
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(k.encode()) + len(v) for k, v in self.headers)
        )


# The two places this module reaches inside aiokafka: it asserts (instead of raising)
# on a commit after the producer was fenced, and leaves the failure of a fenced
# producer on futures nobody awaits (asyncio then logs each at garbage collection).


def _fenced(producer: AIOKafkaProducer) -> bool:
    """Whether the producer failed for good (fenced)."""
    return bool(producer._txn_manager.is_fatal_error())


def _retrieve_failures(producer: AIOKafkaProducer) -> None:
    """Mark a stopped producer's leftover failures retrieved: the caller reports them."""
    futures = [producer._txn_manager.wait_for_transaction_end()]
    for batches in producer._message_accumulator._batches.values():
        futures.extend(getattr(batch, "_drain_waiter", None) for batch in batches)
    for future in futures:
        if future is not None and future.done() and not future.cancelled():
            future.exception()


def _weight(letter: DeadLetter) -> int:
    """Bytes a redrive of ``letter`` holds: its value, or the original it reads back."""
    return len(letter.value or b"") + (0 if letter.holds_record else letter.original_size or 0)


def _by_bytes(letters: Sequence[DeadLetter]) -> list[list[DeadLetter]]:
    """``letters`` in runs of at most ``REDRIVE_CHUNK_BYTES`` of records (at least one each)."""
    runs: list[list[DeadLetter]] = []
    size = 0
    for letter in letters:
        weight = _weight(letter)
        if not runs or size + weight > REDRIVE_CHUNK_BYTES:
            runs.append([])
            size = 0
        runs[-1].append(letter)
        size += weight
    return runs


class _Unsendable(KafkaError):
    """Some records were refused for good; the chunk is tried again without them."""


class _Redriver:
    """Republishes letters and writes their marks, one transaction per chunk."""

    def __init__(self, settings: Settings, dlq_topic: str, limit: int, again: bool) -> None:
        self.settings = settings
        self.dlq_topic = dlq_topic
        self.limit = limit
        self.again = again
        self.marks = _MarkReader(settings, dlq_topic)
        self.producer: AIOKafkaProducer | None = None
        self.max_request = 0
        self.topic_ready = False

    async def close(self) -> None:
        """Stop every client."""
        await self._drop_producer()
        await self.marks.close()

    async def _drop_producer(self) -> None:
        if self.producer is None:
            return
        producer, self.producer = self.producer, None
        with contextlib.suppress(KafkaError):
            await producer.stop()
        _retrieve_failures(producer)

    async def _producer(self, largest: int) -> AIOKafkaProducer:
        """The transactional producer, started, allowed to send ``largest`` bytes.

        Starting it initialises transactions: any other producer of this DLQ's
        redrives is fenced, its open transaction aborted, its commit completed.
        """
        need = max(DEFAULT_MAX_REQUEST, largest + 64 * 1024)
        if self.producer is not None and need <= self.max_request:
            return self.producer
        await self._drop_producer()
        producer = kafka.producer(
            self.settings,
            transactional_id=transactional_id(self.dlq_topic),
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            max_request_size=need,
            linger_ms=5,
        )
        try:
            await kafka.start(producer, self.settings)
        except KafkaError:
            await producer.stop()
            raise
        self.producer, self.max_request = producer, need
        return producer

    def _outgoing(self, letter: DeadLetter, original: Original | None) -> _Outgoing:
        source = original.record if original is not None else None
        headers = _own_headers(source.headers) if source is not None else letter.headers
        headers = [(k, v) for k, v in headers if k not in (dlq.REDRIVE_COUNT, dlq.REDRIVE_OF)]
        headers.append((dlq.REDRIVE_COUNT, str(letter.redrive_count + 1).encode()))
        headers.append((dlq.REDRIVE_OF, f"{self.dlq_topic}:{letter.ref}".encode()))
        if source is not None:
            return _Outgoing(letter, source.key, source.value, headers)
        return _Outgoing(letter, letter.key, letter.value, headers)

    async def run(self, letters: Sequence[DeadLetter], report: RedriveReport) -> None:
        """Redrive one chunk of letters (in DLQ order) into ``report``."""
        report.selected += len(letters)
        candidates = []
        for letter in letters:
            if letter.copy_of is not None:
                report.copies.append(str(letter.ref))
            else:
                candidates.append(letter)
        for run in _by_bytes(candidates):
            await self._run(run, report)

    async def _run(self, letters: Sequence[DeadLetter], report: RedriveReport) -> None:
        # Marks read before the transaction: the letters they name are done for good,
        # and the part read inside it (where a concurrent redrive may fence this one)
        # is short.
        reading = _MarkReading(frozenset(x.ref for x in letters))
        if not self.again:
            reading = await self.marks.read(reading)
            report.already.extend(str(x.ref) for x in letters if x.ref in reading.marks)
            letters = [x for x in letters if x.ref not in reading.marks]
            if not letters:
                return
        reasons: dict[LetterRef, str] = {}
        outgoing: dict[LetterRef, _Outgoing] = {}
        for letter in letters:
            original = None
            if not letter.holds_record:
                original = await read_original(self.settings, letter)
                if original.record is None:
                    reasons[letter.ref] = f"cannot republish: {original.problem}"
                    continue
            outgoing[letter.ref] = self._outgoing(letter, original)
        if not self.topic_ready:
            await ensure_topics(self.settings, {REDRIVES_TOPIC: 1})
            self.topic_ready = True
        for attempt in range(1, FENCED_ATTEMPTS + 1):
            try:
                await self._transaction(letters, outgoing, reasons, reading, report)
                return
            except _Unsendable:
                await self._drop_producer()  # the next producer's start aborts the transaction
            except (KafkaError, IllegalOperation) as exc:
                await self._drop_producer()
                if kafka.is_permanent(exc) or attempt == FENCED_ATTEMPTS:
                    with contextlib.suppress(KafkaError):
                        await self._producer(0)  # aborts what this redrive left open
                    raise TransientError(
                        f"redrive of {self.dlq_topic} did not complete ({exc!r}); nothing of "
                        "its last chunk was republished"
                    ) from exc
                # Fenced by another redrive of this DLQ (or Kafka failed): back off at
                # random, so that two redrives do not keep fencing each other.
                log.info(
                    "redrive of %s: transaction %d failed (%r); trying again",
                    self.dlq_topic, attempt, exc,
                )  # fmt: skip
                await asyncio.sleep(min(5.0, random.uniform(0.05, 0.3) * 2**attempt))
        raise TransientError(f"redrive of {self.dlq_topic}: records kept being refused")

    async def _transaction(
        self,
        letters: Sequence[DeadLetter],
        outgoing: Mapping[LetterRef, _Outgoing],
        reasons: dict[LetterRef, str],
        reading: _MarkReading,
        report: RedriveReport,
    ) -> None:
        """One transaction: re-read the marks, republish the rest, mark them, commit.

        Raises ``KafkaError`` or ``IllegalOperation`` when fenced or failed; nothing
        of the transaction is then visible to ``read_committed`` readers.
        """
        largest = max((x.size for r, x in outgoing.items() if r not in reasons), default=0)
        producer = await self._producer(largest)
        await producer.begin_transaction()
        if not self.again:
            # This producer's start fenced every earlier redrive of the DLQ: each mark
            # they committed is below the high watermark now.
            reading = await self.marks.read(reading, settled=True)
        already: list[str] = []
        refused: list[dict[str, Any]] = []
        todo: list[_Outgoing] = []
        for letter in letters:
            if letter.ref in reading.marks and not self.again:
                already.append(str(letter.ref))
            elif letter.redrive_count >= self.limit:
                refused.append(_refusal(
                    letter, f"already redriven {letter.redrive_count} times (maximum {self.limit})"
                ))  # fmt: skip
            elif not letter.original_topic:
                refused.append(_refusal(letter, "no original topic recorded"))
            elif letter.ref in reasons:
                refused.append(_refusal(letter, reasons[letter.ref]))
            else:
                todo.append(outgoing[letter.ref])
        # One producer, sends in DLQ order: records of one key keep their order.
        sends = [
            await producer.send(out.letter.original_topic, value=out.value, key=out.key,
                                headers=out.headers)
            for out in todo
        ]  # fmt: skip
        results = await asyncio.gather(*sends, return_exceptions=True)
        now = datetime.now(UTC).isoformat()
        done: list[Redriven] = []
        unsendable = False
        for out, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                if not (isinstance(result, KafkaError) and kafka.is_permanent(result)):
                    raise result
                # The transaction cannot commit now: refuse this letter, try the rest again.
                reasons[out.letter.ref] = (
                    f"{out.letter.original_topic} refuses the record: {result}"
                )
                unsendable = True
                continue
            done.append(Redriven(
                self.dlq_topic, out.letter.partition, out.letter.offset, out.letter.original_topic,
                result.partition, result.offset, out.letter.redrive_count + 1, now,
            ))  # fmt: skip
        if unsendable:
            raise _Unsendable("records refused by their topics")
        marks = [
            await producer.send(
                REDRIVES_TOPIC,
                value=json.dumps(asdict(mark), separators=(",", ":")).encode(),
                key=self.dlq_topic.encode(),
            )
            for mark in done
        ]
        for result in await asyncio.gather(*marks, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        if _fenced(producer):
            raise ProducerFenced()
        await producer.commit_transaction()
        report.redriven.extend(done)
        report.already.extend(already)
        report.refused.extend(refused)


def _refusal(letter: DeadLetter, reason: str) -> dict[str, Any]:
    return {"letter": str(letter.ref), "redrive_count": letter.redrive_count, "reason": reason}


async def redrive(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    refs: Sequence[LetterRef] = (),
    max_redrives: int | None = None,
    again: bool = False,
    tenant: str | None = None,
    chunk: int = REDRIVE_CHUNK,
) -> RedriveReport:
    """Republish the selected letters to their original topics; see the module docstring.

    Letters go ``chunk`` at a time (and at most ``REDRIVE_CHUNK_BYTES``), each chunk
    in one transaction; unknown ``refs`` raise ``InvalidRequestError`` before anything
    is republished.
    """
    _check_dlq_topic(dlq_topic)
    limit = max_redrives if max_redrives is not None else settings.dlq_max_redrives
    report = RedriveReport(dlq_topic)
    redriver = _Redriver(settings, dlq_topic, limit, again)
    try:
        if refs:
            wanted = sorted(set(refs))
            await letters_at(settings, dlq_topic, wanted, tenant=tenant, keep_values=False,
                             settle=False)  # fmt: skip
            step = max(1, min(chunk, REF_CHUNK))
            for start in range(0, len(wanted), step):
                letters = await letters_at(
                    settings, dlq_topic, wanted[start : start + step], tenant=tenant, marks=False
                )
                await redriver.run(
                    [x for x in letters if error_type is None or x.error_type == error_type],
                    report,
                )
            return report
        cursor: Cursor | None = None
        index = CopyIndex()
        while True:
            page = await letter_page(
                settings, dlq_topic, cursor=cursor, limit=chunk, error_type=error_type,
                tenant=tenant, keep_values=True, max_bytes=REDRIVE_CHUNK_BYTES, marks=False,
                index=index,
            )  # fmt: skip
            await redriver.run(page.letters, report)
            if page.next_cursor is None:
                return report
            cursor = page.next_cursor
    finally:
        await redriver.close()
