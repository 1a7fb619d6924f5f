"""``ktb tail``: read a topic without a consumer group and print decoded records.

Records are decoded by the bridge's own ``Decoder``: every format it reads
(CloudEvents binary and structured mode, Avro single-object, JSON, Schema Registry
framing with the writer schema from ``KTB_SCHEMA_REGISTRY_URL``), records without
CloudEvents headers through the routes file's ``envelope:`` templates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from aiokafka import TopicPartition

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.decoding import Decoder, EnvelopeSpec, open_decoder, render_decoded
from bridge.errors import ConfigError
from bridge.kafka import stop_consumer
from bridge.routes import RoutesConfig
from bridge.settings import Settings


def _envelopes(settings: Settings) -> dict[str, EnvelopeSpec]:
    """The routes file's ``envelope:`` section, if there is a routes file."""
    if not settings.routes_file.exists():
        return {}
    return dict(RoutesConfig.load(settings.routes_file).envelope)


async def tail_topic(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = False,
    since_s: float = 60.0,
    max_records: int | None = None,
    idle_timeout: float | None = None,
    emit: Callable[[str], None] = print,
) -> int:
    """Print records of ``topic`` until ``max_records`` or ``idle_timeout``; return the count."""
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    async with open_decoder(settings, catalog, _envelopes(settings)) as decoder:
        return await _tail(
            settings, decoder, topic, from_beginning, since_s, max_records, idle_timeout, emit
        )


async def _tail(
    settings: Settings,
    decoder: Decoder,
    topic: str,
    from_beginning: bool,
    since_s: float,
    max_records: int | None,
    idle_timeout: float | None,
    emit: Callable[[str], None],
) -> int:
    consumer = kafka.consumer(settings)
    await consumer.start()
    count = 0
    try:
        deadline = time.monotonic() + 15
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConfigError(f"topic {topic!r} does not exist at {settings.kafka_bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        elif since_s > 0:
            start_ms = int((time.time() - since_s) * 1000)
            found = await consumer.offsets_for_times({tp: start_ms for tp in tps})
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        else:
            await consumer.seek_to_end(*tps)
        last = time.monotonic()
        while max_records is None or count < max_records:
            batch = await consumer.getmany(timeout_ms=200)
            records = sorted(
                (r for rs in batch.values() for r in rs), key=lambda r: (r.timestamp, r.offset)
            )
            for record in records:
                emit(json.dumps(await render_decoded(decoder, record), default=str))
                count += 1
                last = time.monotonic()
                if max_records is not None and count >= max_records:
                    break
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await stop_consumer(consumer)
    return count
