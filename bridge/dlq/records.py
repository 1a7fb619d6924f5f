"""Reading ranges of a topic without a group: what listings, redrive and marks read with.

Every read is ``read_committed`` (an aborted redrive leaves nothing to read),
fetches are bounded, and a read that makes no progress for ``READ_TIMEOUT_S``
fails with ``TransientError`` instead of waiting for ever.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from bridge import kafka
from bridge.errors import InvalidRequestError, TransientError
from bridge.kafka import stop_consumer
from bridge.kafka.topics import topic_partitions
from bridge.settings import Settings

READ_TIMEOUT_S = 30.0
"""A read that makes no progress for this long fails (``TransientError``)."""
FETCH_PARTITION_BYTES = 1024 * 1024
FETCH_BYTES = 4 * 1024 * 1024


def fetching_consumer(
    settings: Settings, isolation_level: str = "read_committed"
) -> AIOKafkaConsumer:
    """A group-less consumer with bounded fetches, not started yet."""
    consumer: AIOKafkaConsumer = kafka.consumer(
        settings,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        fetch_max_bytes=FETCH_BYTES,
    )
    return consumer


@contextlib.asynccontextmanager
async def reader(settings: Settings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started ``fetching_consumer`` for reading ``topic``; Kafka errors are transient."""
    consumer = fetching_consumer(settings)
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


async def batches(
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


async def record_at(
    settings: Settings, topic: str, partition: int, offset: int
) -> tuple[ConsumerRecord[bytes, bytes] | None, str | None]:
    """The record at ``topic[partition]@offset``, or ``None`` and why it cannot be read
    (no such topic or partition, or the offset is past the end or beyond retention)."""
    where = f"{topic}[{partition}]@{offset}"
    try:
        partitions = await topic_partitions(settings, topic)
    except InvalidRequestError:
        return None, f"topic {topic!r} no longer exists"
    if partition not in partitions:
        return None, f"{topic} has no partition {partition}"
    record = None
    async with reader(settings, topic) as consumer:
        tp = TopicPartition(topic, partition)
        end = (await consumer.end_offsets([tp]))[tp]
        if offset < end:
            async for records in batches(consumer, tp, offset, offset + 1):
                record = next((r for r in records if r.offset == offset), record)
    if record is None:
        return None, f"{where} is gone (beyond retention)"
    return record, None
