"""Dead letters: list, show and redrive the records on ``<topic>.dlq``.

Redrive republishes a dead letter's original record (key, value and headers,
without the ``ktb_*`` error headers) to its original topic with
``ktb_redrive_count`` one higher. The live bridge then processes it like any
record; if it fails again it is dead-lettered again with that count, and
redrive refuses letters whose count has reached the configured maximum.

Every redrive is logged on ``ktb.redrives`` (key: the DLQ topic), so a listing
shows which letters were redriven and where to, and redriving a DLQ twice does
not republish the same letter twice unless asked to.

Dead-lettering is at-least-once: a record dead-lettered just before its bridge
died, its offset not committed yet, is dead-lettered again by the partition's
next owner. Such a letter has the original topic, partition and offset of an
earlier one; it is listed as a copy of that letter (``copy_of``) and redrive
never republishes it: the earlier letter stands for the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge import dlq, kafka
from bridge.admin import ensure_topics, stop_consumer
from bridge.codec import SchemaCatalog
from bridge.envelope import TENANT, ce_attribute, decode_data, headers_dict
from bridge.errors import BridgeError, InvalidRequestError, TransientError
from bridge.replay import topic_partitions
from bridge.settings import Settings

REDRIVES_TOPIC = "ktb.redrives"
READ_TIMEOUT_S = 30.0


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


@dataclass
class DeadLetter:
    """One record of a DLQ topic with its error headers read out."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    """The original record's headers (error headers removed)."""
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

    @property
    def ref(self) -> LetterRef:
        """Where the letter is in its DLQ."""
        return LetterRef(self.partition, self.offset)

    @property
    def tenant(self) -> str | None:
        """The event's tenant (``ce_tenantid``), if it has one."""
        return ce_attribute(self.headers, TENANT)

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
        }

    def detail(self, catalog: SchemaCatalog) -> dict[str, Any]:
        """Everything about the letter, with its data decoded when possible (``dlq show``)."""
        out = self.summary()
        out["timestamp"] = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat()
        out["headers"] = headers_dict(self.headers)
        type_name = ce_attribute(self.headers, "type")
        try:
            if not type_name or self.value is None:
                raise BridgeError("no ce_type header or no value")
            out["data"] = decode_data(
                catalog, type_name, ce_attribute(self.headers, "datacontenttype"), self.value
            )
        except BridgeError as exc:
            out["data_error"] = exc.message
            out["value_hex"] = self.value.hex() if self.value is not None else None
        return out


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


def letter_of(record: Any) -> DeadLetter:
    """Read a DLQ consumer record."""
    headers = list(record.headers)
    original = [(k, v) for k, v in headers if k not in dlq.ERROR_HEADERS]
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
        headers=original,
        error_type=_text(_find(headers, dlq.ERROR_TYPE)),
        error_message=_text(_find(headers, dlq.ERROR_MESSAGE)),
        original_topic=topic or "",
        original_partition=_int(_find(headers, dlq.ORIGINAL_PARTITION)),
        original_offset=_int(_find(headers, dlq.ORIGINAL_OFFSET)),
        failed_at=_text(_find(headers, dlq.FAILED_AT)),
        redrive_count=_int(_find(headers, dlq.REDRIVE_COUNT)) or 0,
    )


async def _read_all(settings: Settings, topic: str, partitions: Sequence[int]) -> list[Any]:
    """Every record of ``topic`` up to its end offsets as of now, in partition/offset order."""
    consumer: AIOKafkaConsumer = kafka.consumer(settings, isolation_level="read_committed")
    await kafka.start(consumer, settings)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        reading = {tp for tp in tps if ends[tp] > 0}
        out: list[Any] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while reading:
            if time.monotonic() > deadline:
                raise TransientError(f"timed out reading {topic}")
            batch = await consumer.getmany(*reading, timeout_ms=200)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
            for tp in list(reading):
                if await consumer.position(tp) >= ends[tp]:
                    reading.discard(tp)
            if batch:
                deadline = time.monotonic() + READ_TIMEOUT_S
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    except KafkaError as exc:
        raise TransientError(f"cannot read {topic}: {exc}") from exc
    finally:
        await stop_consumer(consumer)


async def redrives(settings: Settings, dlq_topic: str) -> dict[LetterRef, Redriven]:
    """The redrives logged for ``dlq_topic``, latest per letter."""
    try:
        partitions = await topic_partitions(settings, REDRIVES_TOPIC)
    except InvalidRequestError:
        return {}  # nothing was ever redriven
    out: dict[LetterRef, Redriven] = {}
    for record in await _read_all(settings, REDRIVES_TOPIC, partitions):
        if record.key != dlq_topic.encode() or record.value is None:
            continue
        try:
            mark = Redriven(**json.loads(record.value))
        except (ValueError, TypeError):
            continue  # not a redrive record; the log is shared and append-only
        out[LetterRef(mark.dlq_partition, mark.dlq_offset)] = mark
    return out


async def dead_letters(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    refs: Sequence[LetterRef] = (),
    tenant: str | None = None,
) -> list[DeadLetter]:
    """The letters of a DLQ topic, filtered, each with its latest redrive if any.

    Unknown ``refs`` raise ``InvalidRequestError`` (so a redrive acts on all or nothing).
    """
    if not dlq_topic.endswith(dlq.SUFFIX):
        raise InvalidRequestError(f"{dlq_topic!r} is not a dead-letter topic (<topic>.dlq)")
    partitions = await topic_partitions(settings, dlq_topic)
    letters = [letter_of(r) for r in await _read_all(settings, dlq_topic, partitions)]
    marks = await redrives(settings, dlq_topic)
    mark_copies(letters)
    for letter in letters:
        letter.redriven = marks.get(letter.ref)
    if tenant is not None:
        letters = [x for x in letters if x.tenant == tenant]
    if refs:
        by_ref = {x.ref: x for x in letters}
        missing = [str(r) for r in refs if r not in by_ref]
        if missing:
            raise InvalidRequestError(
                f"{dlq_topic} has no dead letter at {', '.join(missing)} (PARTITION:OFFSET)"
            )
        letters = [by_ref[r] for r in sorted(set(refs))]
    if error_type is not None:
        letters = [x for x in letters if x.error_type == error_type]
    return letters


def mark_copies(letters: Sequence[DeadLetter]) -> None:
    """Set ``copy_of`` on every letter that repeats an earlier letter's original record."""
    first: dict[tuple[str, int, int], LetterRef] = {}
    for letter in sorted(letters, key=lambda x: x.ref):
        if letter.original_partition is None or letter.original_offset is None:
            continue
        origin = (letter.original_topic, letter.original_partition, letter.original_offset)
        earliest = first.setdefault(origin, letter.ref)
        letter.copy_of = earliest if earliest != letter.ref else None


async def redrive(
    settings: Settings,
    dlq_topic: str,
    *,
    error_type: str | None = None,
    refs: Sequence[LetterRef] = (),
    max_redrives: int | None = None,
    again: bool = False,
    tenant: str | None = None,
) -> RedriveReport:
    """Republish the selected letters to their original topics; see the module docstring."""
    limit = max_redrives if max_redrives is not None else settings.dlq_max_redrives
    letters = await dead_letters(
        settings, dlq_topic, error_type=error_type, refs=refs, tenant=tenant
    )
    report = RedriveReport(dlq_topic, selected=len(letters))
    todo: list[DeadLetter] = []
    for letter in letters:
        if letter.copy_of is not None:
            report.copies.append(str(letter.ref))
        elif letter.redriven is not None and not again:
            report.already.append(str(letter.ref))
        elif letter.redrive_count >= limit:
            report.refused.append(
                {"letter": str(letter.ref), "redrive_count": letter.redrive_count,
                 "reason": f"already redriven {letter.redrive_count} times (maximum {limit})"}
            )  # fmt: skip
        elif not letter.original_topic:
            report.refused.append(
                {"letter": str(letter.ref), "redrive_count": letter.redrive_count,
                 "reason": "no original topic recorded"}
            )  # fmt: skip
        else:
            todo.append(letter)
    if not todo:
        return report
    await ensure_topics(settings, {REDRIVES_TOPIC: 1})
    producer = kafka.producer(settings)
    await kafka.start(producer, settings)
    try:
        # One producer, sends in DLQ order: records of one key keep their order.
        sends = []
        for letter in todo:
            count = letter.redrive_count + 1
            headers = [(k, v) for k, v in letter.headers if k != dlq.REDRIVE_COUNT]
            headers.append((dlq.REDRIVE_COUNT, str(count).encode()))
            sends.append(
                await producer.send(
                    letter.original_topic, value=letter.value, key=letter.key, headers=headers
                )
            )
        now = datetime.now(UTC).isoformat()
        for letter, sent in zip(todo, sends, strict=True):
            meta = await sent
            mark = Redriven(
                dlq_topic, letter.partition, letter.offset, letter.original_topic,
                meta.partition, meta.offset, letter.redrive_count + 1, now,
            )  # fmt: skip
            report.redriven.append(mark)
        for mark in report.redriven:
            await producer.send(
                REDRIVES_TOPIC,
                value=json.dumps(asdict(mark), separators=(",", ":")).encode(),
                key=dlq_topic.encode(),
            )
        await producer.flush()
    except KafkaError as exc:
        raise TransientError(f"redrive of {dlq_topic} failed part-way: {exc}") from exc
    finally:
        await producer.stop()
    return report
