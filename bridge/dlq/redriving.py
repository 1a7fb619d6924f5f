"""Redrive: republish dead letters to their original topics, once, in Kafka transactions.

Redrive republishes a dead letter's original record (key, value and headers,
without the ``ktb_*`` letter headers) to its original topic and partition with
``ktb_redrive_count`` one higher and ``ktb_redrive_of`` naming the letter. The
live bridge then processes it like any record; if it fails again it is
dead-lettered again with that count, and redrive refuses letters whose count
has reached the configured maximum. A ``too_large_to_copy`` letter holds no
record: redrive reads the original from its topic at the letter's coordinates
(while retention keeps it there). Copies of an earlier letter are never
republished.

The republished records and their marks on ``ktb.redrives`` (``bridge.dlq.marks``)
are written in one Kafka transaction, whose transactional id is derived from the
DLQ topic (``ktb-redrive-<dlq topic>``): two redrives of one DLQ (CLI and API,
or a retry after a crash) fence each other, and each re-reads the marks after
fencing the other, inside its transaction, so a letter is republished once. The
bridge reads ``read_committed``: an aborted redrive leaves nothing it acts on.
Redrive of everything matching a filter goes page by page, one transaction per
page. A redrive returns once ``read_committed`` readers see its marks (the broker
writes a transaction's commit markers just after the commit returns), so a listing
made after it shows its letters redriven.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from bridge import kafka
from bridge.dlq.letters import (
    CopyIndex,
    Cursor,
    Letter,
    LetterRef,
    Original,
    Redriven,
    check_dlq_topic,
    own_headers,
)
from bridge.dlq.marks import TRANSACTION_TIMEOUT_MS, MarkReader, MarkReading
from bridge.dlq.publisher import REDRIVE_COUNT, REDRIVE_OF
from bridge.dlq.reading import letter_page, letters_at, read_original
from bridge.errors import TransientError
from bridge.kafka import ensure_topics
from bridge.kafka.topics import REDRIVES_TOPIC
from bridge.settings import Settings

log = logging.getLogger("ktb.redrive")

REDRIVE_CHUNK = 200
REDRIVE_CHUNK_BYTES = 16 * 1024 * 1024
"""A redrive transaction carries at most this many letters and record bytes."""
REF_CHUNK = 32
"""Letters named by offset are read this many at a time (their size is not known before)."""
FENCED_ATTEMPTS = 8
DEFAULT_MAX_REQUEST = 1024 * 1024


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


def transactional_id(dlq_topic: str) -> str:
    """The transactional id of every redrive of ``dlq_topic``: they fence each other."""
    return f"ktb-redrive-{dlq_topic}"


@dataclass
class _Outgoing:
    """One letter to republish: the record as it goes out."""

    letter: Letter
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


def _by_bytes(letters: Sequence[Letter]) -> list[list[Letter]]:
    """``letters`` in runs of at most ``REDRIVE_CHUNK_BYTES`` of records (at least one each)."""
    runs: list[list[Letter]] = []
    size = 0
    for letter in letters:
        weight = letter.weight
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
        self.marks = MarkReader(settings, dlq_topic)
        self.producer: AIOKafkaProducer | None = None
        self.max_request = 0
        self.topic_ready = False
        self.written: dict[int, int] = {}
        """Per partition of ``ktb.redrives``, the offset after the last mark committed."""

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

    def _outgoing(self, letter: Letter, original: Original | None) -> _Outgoing:
        source = original.record if original is not None else None
        headers = own_headers(source.headers) if source is not None else letter.headers
        headers = [(k, v) for k, v in headers if k not in (REDRIVE_COUNT, REDRIVE_OF)]
        headers.append((REDRIVE_COUNT, str(letter.redrive_count + 1).encode()))
        headers.append((REDRIVE_OF, f"{self.dlq_topic}:{letter.ref}".encode()))
        if source is not None:
            return _Outgoing(letter, source.key, source.value, headers)
        return _Outgoing(letter, letter.key, letter.value, headers)

    async def run(self, letters: Sequence[Letter], report: RedriveReport) -> None:
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

    async def _run(self, letters: Sequence[Letter], report: RedriveReport) -> None:
        # Marks read before the transaction: the letters they name are done for good,
        # and the part read inside it (where a concurrent redrive may fence this one)
        # is short.
        reading = MarkReading(frozenset(x.ref for x in letters))
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
        letters: Sequence[Letter],
        outgoing: Mapping[LetterRef, _Outgoing],
        reasons: dict[LetterRef, str],
        reading: MarkReading,
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
        # One producer, sends in DLQ order: records of one key keep their order. Each goes
        # back to its original partition, where its key's records are (and where a key
        # parked behind the letter waits for it).
        sends = [
            await producer.send(out.letter.original_topic, value=out.value, key=out.key,
                                partition=out.letter.original_partition, headers=out.headers)
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
        ends: dict[int, int] = {}
        for result in await asyncio.gather(*marks, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
            ends[result.partition] = max(ends.get(result.partition, 0), result.offset + 1)
        if _fenced(producer):
            raise ProducerFenced()
        await producer.commit_transaction()
        report.redriven.extend(done)
        report.already.extend(already)
        report.refused.extend(refused)
        for partition, end in ends.items():
            self.written[partition] = max(self.written.get(partition, 0), end)

    async def settle(self) -> None:
        """Wait until ``read_committed`` readers see every mark this redrive committed, so
        that a listing made after it returns shows the letters redriven (within
        ``VISIBLE_TIMEOUT_S``; past it, or without Kafka, a warning: the redrive stands)."""
        problem = await self.marks.await_visible(self.written)
        if problem is not None:
            log.warning(
                "redrive of %s committed; its marks are not visible to readers yet (%s)",
                self.dlq_topic, problem,
            )  # fmt: skip


def _refusal(letter: Letter, reason: str) -> dict[str, Any]:
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
    check_dlq_topic(dlq_topic)
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
        else:
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
                    break
                cursor = page.next_cursor
        await redriver.settle()
        return report
    finally:
        await redriver.close()
