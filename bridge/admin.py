"""Topic administration shared by ``ktb dev``, the tests and the chaos harness."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bridge import kafka
from bridge.settings import Settings


async def ensure_topics(settings: Settings, topics: Mapping[str, int]) -> list[str]:
    """Create the missing topics with the given partition counts; return the created ones."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=parts, replication_factor=1)
            for name, parts in topics.items()
            if name not in existing
        ]
        if not missing:
            return []
        result = await admin.create_topics(missing)
        created = []
        for name, code, *_ in result.topic_errors:
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"creating topic {name} failed with error code {code}")
        return created
    finally:
        await admin.close()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer, tolerating aiokafka's group-less close quirk.

    A consumer without a group cancels an internal task that may not have run
    yet, and ``stop()`` then re-raises that task's ``CancelledError``. Only a
    cancellation aimed at the caller's own task is propagated.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
