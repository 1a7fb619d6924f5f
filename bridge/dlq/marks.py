"""Redrive marks: which letters were redriven and where to, on ``ktb.redrives``.

Every redrive writes one mark per republished letter (key: the DLQ topic; value:
a ``Redriven`` as JSON) in the transaction that republishes it, so a listing
shows which letters were redriven, and redriving a DLQ twice does not republish
the same letter twice unless asked to. The log is shared by every DLQ and
append-only: a letter's latest mark is the last one read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge import kafka
from bridge.backoff import Backoff
from bridge.dlq.letters import LetterRef, Redriven
from bridge.dlq.records import READ_TIMEOUT_S, batches, fetching_consumer
from bridge.errors import BridgeError, InvalidRequestError, TransientError
from bridge.kafka import stop_consumer
from bridge.kafka.topics import REDRIVES_TOPIC, topic_partitions
from bridge.settings import Settings

TRANSACTION_TIMEOUT_MS = 30_000
"""A redrive that dies mid-transaction holds back ``read_committed`` readers of the
partitions it wrote to until the broker aborts it after this long (or until the
next redrive of the same DLQ fences it)."""
VISIBLE_TIMEOUT_S = 5.0
"""Longest a redrive waits, once committed, for ``read_committed`` readers to see its marks."""
VISIBLE_POLL_S = 0.01
"""First pause between two reads of the last stable offsets; it doubles up to
``VISIBLE_POLL_MAX_S``."""
VISIBLE_POLL_MAX_S = 0.5


@dataclass
class MarkReading:
    """Redrive marks of some letters, read up to ``positions`` of ``ktb.redrives``."""

    refs: frozenset[LetterRef]
    marks: dict[LetterRef, Redriven] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)


class MarkReader:
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
        consumer = fetching_consumer(self.settings, isolation_level)
        try:
            await kafka.start(consumer, self.settings)
        except BaseException:  # a failed or cancelled start (await_visible's deadline)
            await stop_consumer(consumer)
            raise
        return consumer

    async def read(self, reading: MarkReading, *, settled: bool = False) -> MarkReading:
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
            consumer = await self._committed_reader()
            tps = [TopicPartition(REDRIVES_TOPIC, p) for p in self.partitions]
            if settled:
                if self.watermarks is None:
                    self.watermarks = await self._started("read_uncommitted")
                ends = await self.watermarks.end_offsets(tps)
            else:
                ends = await consumer.end_offsets(tps)
            for tp in tps:
                await self._read(reading, tp, ends[tp], settled)
        except KafkaError as exc:
            raise TransientError(f"cannot read {REDRIVES_TOPIC}: {exc}") from exc
        return reading

    async def await_visible(self, ends: Mapping[int, int]) -> str | None:
        """Wait until ``read_committed`` readers see ``ktb.redrives`` up to ``ends`` (per
        partition, the offset after the last mark written): ``None`` once they do, else
        why not (``VISIBLE_TIMEOUT_S`` passed, or Kafka did not answer). Never raises for
        either: what it waits for is committed already.

        The broker writes a transaction's commit markers just after the commit returns,
        and the last stable offset moves only then: a redrive that waits for it is seen by
        any listing made after it returns.
        """
        if not ends:
            return None
        wanted = {TopicPartition(REDRIVES_TOPIC, p): end for p, end in ends.items()}
        pause = Backoff(VISIBLE_POLL_S, VISIBLE_POLL_MAX_S)
        try:
            async with asyncio.timeout(VISIBLE_TIMEOUT_S):
                consumer = await self._committed_reader()
                while True:
                    stable = await consumer.end_offsets(list(wanted))
                    if all(stable[tp] >= end for tp, end in wanted.items()):
                        return None
                    await asyncio.sleep(pause.next())
        except TimeoutError:
            return f"not within {VISIBLE_TIMEOUT_S:g} s"
        except (KafkaError, BridgeError) as exc:
            return f"{REDRIVES_TOPIC} unreadable: {exc!r}"

    async def _committed_reader(self) -> AIOKafkaConsumer:
        """The ``read_committed`` consumer, started on first use."""
        if self.consumer is None:
            self.consumer = await self._started("read_committed")
        return self.consumer

    async def _read(
        self, reading: MarkReading, tp: TopicPartition, end: int, settled: bool
    ) -> None:
        assert self.consumer is not None
        start = reading.positions.get(tp.partition, 0)
        if start >= end:
            return
        # Settled: wait out open transactions (a crashed one until the broker aborts it).
        timeout = READ_TIMEOUT_S + (TRANSACTION_TIMEOUT_MS / 1000 + 15 if settled else 0)
        async for records in batches(self.consumer, tp, start, end, timeout):
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


async def read_marks(
    settings: Settings, dlq_topic: str, refs: Iterable[LetterRef]
) -> dict[LetterRef, Redriven]:
    """The latest redrive mark of each of ``refs``, by a streaming pass over ``ktb.redrives``."""
    marks = MarkReader(settings, dlq_topic)
    try:
        return (await marks.read(MarkReading(frozenset(refs)))).marks
    finally:
        await marks.close()
