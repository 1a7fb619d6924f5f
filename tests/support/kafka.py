"""Kafka for integration tests: topics, partitions, and ``Services`` (produce, read back)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from temporalio.client import Client

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.decoding import render
from bridge.envelope import Event, decode_consumed, encode_event
from bridge.kafka import stop_consumer
from bridge.settings import Settings


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end offset (high watermark) of every partition of ``topic``."""
    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        tps = await partitions(consumer, topic)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await stop_consumer(consumer)


async def topic_exists(settings: Settings, topic: str) -> bool:
    """Whether ``topic`` exists, asked without naming it (naming it may create it)."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 15.0
) -> list[TopicPartition]:
    """The partitions of ``topic``, refreshing metadata until they are known."""
    deadline = time.monotonic() + timeout
    parts = consumer.partitions_for_topic(topic) or set()
    while not parts and time.monotonic() < deadline:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await asyncio.sleep(0.2)
    return [TopicPartition(topic, p) for p in sorted(parts)]


class Services:
    """A producer plus readers for one test."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog, client: Client) -> None:
        self.settings = settings
        self.catalog = catalog
        self.client = client
        self.producer = kafka.producer(settings)

    async def start(self) -> None:
        """Start the producer."""
        await self.producer.start()

    async def stop(self) -> None:
        """Stop the producer."""
        await self.producer.stop()

    async def produce(
        self,
        topic: str,
        type: str,
        data: dict[str, Any],
        *,
        key: str | None = None,
        id: str | None = None,
        tenant: str | None = None,
        traceparent: str | None = None,
        content_type: str = "application/avro",
    ) -> str:
        """Encode and produce one event; return its id."""
        event_id = id or str(uuid.uuid4())
        record = encode_event(
            self.catalog,
            type=type,
            data=data,
            id=event_id,
            source="tests",
            key=key,
            tenant_id=tenant,
            traceparent=traceparent,
            content_type=content_type,
        )
        await self.producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=record.headers
        )
        return event_id

    async def produce_raw(
        self,
        topic: str,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        key: bytes | None = None,
    ) -> None:
        """Produce bytes as they are (poison records)."""
        await self.producer.send_and_wait(topic, value=value, key=key, headers=list(headers))

    async def read(self, topic: str, count: int, timeout: float = 30.0) -> list[ConsumerRecord]:
        """Read at least ``count`` records from the beginning of ``topic``."""
        consumer = kafka.consumer(self.settings)
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            tps = await partitions(consumer, topic, timeout)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[ConsumerRecord] = []
            while len(out) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend(records)
            return out
        finally:
            await stop_consumer(consumer)

    def decode(self, record: ConsumerRecord) -> Event:
        """Decode a record read back from Kafka."""
        return decode_consumed(self.catalog, record)

    def render(self, record: ConsumerRecord) -> dict[str, Any]:
        """A record as ``ktb tail`` prints it."""
        return render(self.catalog, record)

    async def committed(self, topic: str) -> dict[int, int]:
        """The bridge group's committed offsets per partition of ``topic``."""
        consumer = kafka.consumer(self.settings, group_id=self.settings.group_id)
        await consumer.start()
        try:
            out = {}
            for tp in await partitions(consumer, topic):
                out[tp.partition] = await consumer.committed(tp) or 0
            return out
        finally:
            await stop_consumer(consumer)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The end offset of every partition of ``topic``."""
        return await end_offsets(self.settings, topic)


async def unique_topics(settings: Settings, uid: str) -> dict[str, str]:
    """Topic names ending in ``uid``, created with 3 partitions (dead-letter topics with 1):
    ``orders``, ``payments``, ``outcomes``, ``compensations``."""
    names = {
        "orders": f"orders-{uid}",
        "payments": f"payments-{uid}",
        "outcomes": f"orders.outcomes-{uid}",
        "compensations": f"orders.compensations-{uid}",
    }
    spec = {n: 3 for n in names.values()}
    spec.update({f"{names['orders']}.dlq": 1, f"{names['payments']}.dlq": 1})
    await kafka.ensure_topics(settings, spec)
    return names
