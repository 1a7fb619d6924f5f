"""Helpers of the dead-letter tests: letters written directly, topics read as the bridge does."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from bridge import dlq, kafka
from bridge.kafka import stop_consumer
from bridge.settings import Settings
from tests.support import end_offsets, eventually, partitions


async def create_topic(
    settings: Settings, name: str, count: int = 1, configs: dict[str, str] | None = None
) -> None:
    """A topic with topic configs (``ensure_topics`` takes none)."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, count, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


def letter_headers(
    headers: list[tuple[str, bytes]], topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """A record's headers plus the headers the bridge adds when it dead-letters it."""
    return [
        *headers,
        (dlq.ERROR_TYPE, b"unmatched"),
        (dlq.ERROR_MESSAGE, b"no route"),
        (dlq.ORIGINAL_TOPIC, topic.encode()),
        (dlq.ORIGINAL_PARTITION, str(partition).encode()),
        (dlq.ORIGINAL_OFFSET, str(offset).encode()),
        (dlq.FAILED_AT, b"2026-11-26T00:00:00+00:00"),
    ]


async def read_to_end(
    settings: Settings, topic: str, isolation_level: str = "read_committed"
) -> list[Any]:
    """Every record of ``topic`` up to its end as of now, as the bridge reads it by default.

    Read committed, the end is where the last stable offset has reached the high
    watermark of now: a transaction whose commit has returned (a redrive's) writes its
    commit markers after that, and its records are not read before they are written.
    """
    consumer = kafka.consumer(
        settings, isolation_level=isolation_level, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = await partitions(consumer, topic)
        consumer.assign(tps)
        if isolation_level == "read_committed":
            ends = await stable_ends(settings, consumer, tps)
        else:
            ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 60
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                assert time.monotonic() < deadline, f"{tp} not read to {ends[tp]} in 60s"
                batch = await consumer.getmany(tp, timeout_ms=500)
                out.extend(r for r in batch.get(tp, []) if r.offset < ends[tp])
        return out
    finally:
        await stop_consumer(consumer)


async def stable_ends(
    settings: Settings, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """``consumer``'s (read committed) end offsets once they reach the partitions' high
    watermarks as of the call: no transaction committed before it is still unmarked."""
    marks = await end_offsets(settings, tps[0].topic)

    async def caught_up() -> dict[TopicPartition, int] | None:
        ends = await consumer.end_offsets(tps)
        return ends if all(ends[tp] >= marks[tp.partition] for tp in tps) else None

    return await eventually(caught_up, timeout=30)
