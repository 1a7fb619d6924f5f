"""The indexer: the provenance topic into the read model, in batches, exactly once in effect.

It consumes ``ktb.provenance`` in a consumer group (``KTB_INDEXER_GROUP_ID``), so any
number of indexers (inside ``ktb api`` replicas, or ``ktb indexer`` processes) share
the partitions. Each fetched batch is written in one transaction and its offsets are
committed only after the transaction: a crash in between reads the batch again, and
rows keyed by their place in the topic make the second write change nothing. While
the database is down the indexer holds its batch and retries it, fetching nothing
more; the bridge's own path never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from bridge import kafka
from bridge.backoff import Backoff
from bridge.errors import DatabaseUnavailable
from bridge.kafka import ensure_topics, stop_consumer
from bridge.observability.metrics import Metrics
from bridge.settings import Settings
from bridge.store.provenance import Batch, ProvenanceStore, batch_of

log = logging.getLogger("ktb.indexer")

PARTITIONS = 3
"""Partitions of the provenance topic when the indexer is the first to need it."""
EXPIRE_EVERY_S = 3600.0
"""How often retention runs (it drops whole days, so hourly is plenty)."""


class Indexer:
    """Feeds a ``ProvenanceStore`` from the provenance topic until stopped."""

    def __init__(self, settings: Settings, store: ProvenanceStore, metrics: Metrics) -> None:
        self.settings = settings
        self.topic = settings.provenance_topic
        self.store = store
        self.metrics = metrics
        self.caught_up = asyncio.Event()
        """Set once this indexer has written everything its partitions held when assigned."""
        self._targets: dict[TopicPartition, int] = {}
        self._joined = False
        """Set once the group assigned this indexer its partitions (possibly none)."""
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the indexers' group and index in the background."""
        consumer = kafka.consumer(
            self.settings,
            group_id=self.settings.indexer_group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=5000,
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.heartbeat_interval_s * 1000),
        )
        await ensure_topics(self.settings, {self.topic: PARTITIONS})
        await kafka.start(consumer, self.settings)
        consumer.subscribe([self.topic], listener=_Joined(self))
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="ktb-indexer")
        self._task.add_done_callback(_log_end)

    async def stop(self) -> None:
        """Stop indexing; a batch not yet committed is read again by the next indexer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await stop_consumer(self._consumer)

    async def wait(self) -> None:
        """Until the indexing task ends (it only ends by ``stop`` or a bug)."""
        if self._task is not None:
            await self._task

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time()
        while True:
            if loop.time() >= next_expiry:
                next_expiry = loop.time() + await self._expire()
            try:
                fetched = await consumer.getmany(
                    timeout_ms=500, max_records=self.settings.indexer_batch
                )
            except KafkaError as exc:
                log.warning("reading %s failed, retrying: %s", self.topic, exc)
                await asyncio.sleep(1.0)
                continue
            if fetched:
                records = ((r.value, r.partition, r.offset) for rs in fetched.values() for r in rs)
                batch = batch_of(records, self.settings.provenance_retention_days)
                await self._write(batch)
                await self._commit(
                    consumer, {tp: rs[-1].offset + 1 for tp, rs in fetched.items() if rs}
                )
            if not self.caught_up.is_set():
                await self._check_caught_up(consumer)

    async def _expire(self) -> float:
        """Run retention; seconds until the next run (sooner after a failure)."""
        try:
            await self.store.expire()
        except DatabaseUnavailable as exc:
            log.warning("retention postponed: %s", exc.message)
            return 30.0
        except asyncpg.PostgresError as exc:
            # Retention refused (permissions, a lock held too long) must not stop indexing.
            log.error("retention failed, retrying in an hour: %s", exc)
        return EXPIRE_EVERY_S

    async def _write(self, batch: Batch) -> None:
        """Write ``batch``, waiting out the database being down (nothing is fetched meanwhile)."""
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        paused = False
        while True:
            try:
                await self.store.write(batch)
                break
            except DatabaseUnavailable as exc:
                if not paused:
                    log.warning("indexer paused, retrying the batch: %s", exc.message)
                    paused = True
                    self.metrics.indexer_paused.set(1)
                await asyncio.sleep(backoff.next())
        if paused:
            log.info("indexer resumed: the database answers again")
            self.metrics.indexer_paused.set(0)
        self.metrics.indexer_records.labels("written").inc(batch.records - batch.skipped)
        if batch.skipped:
            self.metrics.indexer_records.labels("skipped").inc(batch.skipped)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Partitions moved to another indexer (or Kafka is away): whoever reads these
            # records next writes them again, which changes nothing.
            log.info("offsets of the provenance batch not committed: %s", exc)

    @property
    def state(self) -> str:
        """For readiness: ``ok``, ``catching up``, or ``stopped`` (the task ended: a bug)."""
        if self._task is not None and self._task.done():
            return "stopped"
        return "ok" if self.caught_up.is_set() else "catching up"

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        if not self._joined:
            return
        assigned = consumer.assignment()
        missing = [tp for tp in assigned if tp not in self._targets]
        if missing:
            self._targets.update(await consumer.end_offsets(missing))
        for tp in assigned:
            if await consumer.position(tp) < self._targets[tp]:
                return
        self.caught_up.set()
        log.info("provenance indexer caught up (%s)", self.settings.indexer_group)


class _Joined(ConsumerRebalanceListener):
    """Marks the indexer joined: with more indexers than partitions, one that was
    assigned none has nothing to catch up with (lookups read the shared database)."""

    def __init__(self, indexer: Indexer) -> None:
        self.indexer = indexer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Nothing to hand over: offsets are committed after each batch's transaction."""

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """The group's answer, possibly no partitions."""
        self.indexer._joined = True


def _log_end(task: asyncio.Task[None]) -> None:
    """An indexer that stops by itself is a bug: say so (``ktb indexer`` exits with it)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the provenance indexer stopped", exc_info=task.exception())
