"""An in-memory index of the provenance topic, rebuilt from Kafka on start.

Bridges and workers append provenance records to ``ktb.provenance``; this
reader consumes the topic from the beginning (without a consumer group, so
every API instance sees every partition) and keeps following it. The data
lives in Kafka, so the index is the same after restarts and whichever bridge
instance handled an event. Memory is bounded: the oldest event ids and
workflows are dropped beyond ``max_events``; started workflows stay findable
through Temporal visibility (``KtbEventId``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge import kafka
from bridge.kafka import ensure_topics, stop_consumer
from bridge.provenance import EventProvenance, PublishedProvenance, parse
from bridge.settings import Settings

log = logging.getLogger("ktb.api.index")

MAX_HANDLINGS = 20
"""Records kept per event id (redeliveries and replays add more)."""
PARTITIONS = 3
"""Partitions of the provenance topic when the API is the first to need it."""


Visible = Callable[[str | None], bool]
"""Whether records of a tenant may be shown (``Caller.may_see``)."""


def _everyone(tenant: str | None) -> bool:
    return True


def primary_of(handlings: list[EventProvenance]) -> EventProvenance | None:
    """Among an event's records, the one that tells its effect: the first not a repeat."""
    for item in handlings:
        if item.outcome not in ("duplicate", "dry_run"):
            return item
    return handlings[0] if handlings else None


class ProvenanceIndex:
    """Event id → what the bridge did; workflow id → what the workflow published.

    Records are kept as the bytes read from Kafka (about half the memory of the
    parsed values) and parsed again on lookup, which is rare next to ingest.
    """

    def __init__(self, max_events: int = 500_000) -> None:
        self.max_events = max_events
        self._events: OrderedDict[str, list[bytes]] = OrderedDict()
        self._published: OrderedDict[str, list[tuple[str, bytes]]] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.records = 0

    def add(self, value: bytes | None) -> None:
        """Apply one record of the provenance topic; unreadable records are ignored."""
        item = parse(value) if value else None
        if item is None or value is None:
            return
        self.records += 1
        if isinstance(item, EventProvenance):
            if item.event_id:
                self._add_event(item.event_id, value)
        else:
            self._add_published(item, value)

    def _add_event(self, event_id: str, value: bytes) -> None:
        handlings = self._events.get(event_id)
        if handlings is None:
            handlings = self._events[event_id] = []
            if len(self._events) > self.max_events:
                self._events.popitem(last=False)
        if len(handlings) < MAX_HANDLINGS:
            handlings.append(value)
        for waiter in self._waiters.pop(event_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _add_published(self, item: PublishedProvenance, value: bytes) -> None:
        items = self._published.get(item.workflow_id)
        if items is None:
            items = self._published[item.workflow_id] = []
            if len(self._published) > self.max_events:
                self._published.popitem(last=False)
        # A retried activity republishes the same ce_id: one entry per event.
        if all(ce_id != item.ce_id for ce_id, _ in items):
            items.append((item.ce_id, value))

    def handlings(self, event_id: str, visible: Visible = _everyone) -> list[EventProvenance]:
        """Every record of what happened to ``event_id``, oldest first.

        Event ids are not unique across tenants (a Kafka producer chooses them):
        ``visible`` keeps the records of the tenants a caller may see.
        """
        out = []
        for value in self._events.get(event_id, ()):
            item = parse(value)
            if isinstance(item, EventProvenance) and visible(item.tenant_id):
                out.append(item)
        return out

    def primary(self, event_id: str, visible: Visible = _everyone) -> EventProvenance | None:
        """The record that tells the event's effect: the first one that was not a repeat."""
        return primary_of(self.handlings(event_id, visible))

    def published(
        self, workflow_id: str, visible: Visible = _everyone
    ) -> list[PublishedProvenance]:
        """Events ``workflow_id`` published (those of tenants ``visible`` allows), in order."""
        out = []
        for _, value in self._published.get(workflow_id, ()):
            item = parse(value)
            if isinstance(item, PublishedProvenance) and visible(item.tenant_id):
                out.append(item)
        return out

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._events

    async def wait(self, event_id: str, timeout: float) -> bool:
        """Wait until a record for ``event_id`` arrives; ``False`` on timeout."""
        if event_id in self._events:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(event_id, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(event_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[event_id]


class IndexFollower:
    """Feeds a ``ProvenanceIndex`` from the provenance topic until stopped."""

    def __init__(self, settings: Settings, index: ProvenanceIndex) -> None:
        self.settings = settings
        self.topic = settings.provenance_topic
        self.index = index
        self.caught_up = asyncio.Event()
        self._targets: dict[TopicPartition, int] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start reading from the beginning of the topic in the background."""
        # No group: every API instance reads every partition; new partitions are
        # picked up when metadata refreshes.
        consumer = kafka.consumer(
            self.settings,
            self.topic,
            group_id=None,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
        )
        await ensure_topics(self.settings, {self.topic: PARTITIONS})
        await kafka.start(consumer, self.settings)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="ktb-provenance-index")

    async def stop(self) -> None:
        """Stop following the topic."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await stop_consumer(self._consumer)

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batch.values():
                    for record in records:
                        self.index.add(record.value)
                if not self.caught_up.is_set():
                    await self._check_caught_up(consumer)
            except KafkaError as exc:
                log.warning("reading %s failed, retrying: %s", self.topic, exc)
                await asyncio.sleep(1.0)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        assigned: Iterable[TopicPartition] = consumer.assignment()
        if not assigned:
            return
        if self._targets is None:
            self._targets = await consumer.end_offsets(list(assigned))
        for tp, end in self._targets.items():
            if await consumer.position(tp) < end:
                return
        self.caught_up.set()
        log.info("provenance index caught up: %d records", self.index.records)
