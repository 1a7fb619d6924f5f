"""Provenance: what the bridge did with each event, kept in Kafka itself.

Every handled event gets one provenance item on the ``ktb.provenance`` topic: where
it was read, the route, the action and outcome, the workflow it touched. Every event
an activity publishes gets one too. Items are written in batches, one Kafka record per
partition per flush, each batch in the partition an item's key (the event id, or the
workflow id) hashes to as a keyed record would: all items of one event sit in one
partition in order. The records survive restarts and are shared by all bridge
instances; readers (the provenance indexer) read single items (as earlier versions
wrote them) and batches alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from bridge.dispatch import Result
from bridge.envelope import TENANT, Event, RecordLike, ce_attribute
from bridge.settings import Settings

TOPIC = "ktb.provenance"
log = logging.getLogger("ktb.provenance")
_dumps = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class EventProvenance:
    """What happened to one consumed event."""

    event_id: str | None
    event_type: str | None
    tenant_id: str | None
    key: str | None
    topic: str
    partition: int
    offset: int
    route: str | None
    action: str | None
    outcome: str
    workflow_id: str | None
    run_id: str | None
    detail: str | None
    at: str
    via: str
    kind: Literal["event"] = "event"


@dataclass(frozen=True)
class PublishedProvenance:
    """One event a workflow published (outcome or compensation)."""

    ce_id: str
    type: str
    topic: str
    partition: int
    offset: int
    published_kind: str
    workflow_id: str
    causation_id: str | None
    tenant_id: str | None
    at: str
    kind: Literal["published"] = "published"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def parse_record(value: bytes) -> list[EventProvenance | PublishedProvenance | None]:
    """The items of one provenance record, in the order written: several for a batch,
    one for a single item; ``None`` stands for each item not recognised (an unreadable
    record is one ``None``)."""
    try:
        raw = json.loads(value)
    except ValueError:
        return [None]
    if isinstance(raw, dict) and raw.get("kind") == BATCH and isinstance(raw.get("items"), list):
        return [_item(item) for item in raw["items"]]
    return [_item(raw)]


def _item(raw: Any) -> EventProvenance | PublishedProvenance | None:
    if not isinstance(raw, dict):
        return None
    try:
        if raw.get("kind") == "event":
            return EventProvenance(**raw)
        if raw.get("kind") == "published":
            return PublishedProvenance(**raw)
    except TypeError:
        pass
    return None


BATCH = "batch"
"""The ``kind`` of a record that carries several items (``{"kind": "batch", "items": [...]}``)."""
LINGER_S = 0.2
"""How long items wait for company before they are sent (``KTB_PROVENANCE_LINGER_MS``
sets it per process)."""
FLUSH_ITEMS = 500
"""Items buffered that trigger a flush before the linger is over."""
MAX_BUFFERED = 20 * FLUSH_ITEMS
"""Items held while sends are stuck; more are dropped (and counted in the log)."""
MAX_RECORD_BYTES = 256 * 1024
"""A batch record above this is split (Kafka refuses batches above ~1 MB by default)."""


class ProvenanceWriter:
    """Buffers provenance items and sends them in batches, never making the caller wait.

    Each Kafka produce request costs far more than the items it carries, so items wait
    up to ``linger_s`` (or until ``FLUSH_ITEMS`` are buffered) and go out as one record
    per partition. Sends are not awaited for acknowledgement: provenance is a record,
    never a reason to stall events. ``close`` (or leaving ``async with``) sends what is
    buffered; the owner closes the writer before it stops the producer.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str = TOPIC,
        via: str = "live",
        linger_s: float = LINGER_S,
        close_timeout_s: float = 10.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.via = via
        self.linger_s = linger_s
        self.close_timeout_s = close_timeout_s
        self._items: list[tuple[str | None, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._closed = False
        self._dropped = 0
        self._unkeyed = 0

    @classmethod
    def for_settings(
        cls, producer: AIOKafkaProducer, settings: Settings, via: str = "live"
    ) -> ProvenanceWriter:
        """A writer to ``settings``' provenance topic with its linger."""
        return cls(
            producer,
            settings.provenance_topic,
            via,
            settings.provenance_linger_ms / 1000,
            settings.commit_timeout_s,
        )

    async def __aenter__(self) -> ProvenanceWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _add(self, key: str | None, item: Any) -> None:
        if self._closed:
            log.warning("provenance writer closed: dropped a %s item", item.kind)
            return
        if len(self._items) >= MAX_BUFFERED:
            # Sends are stuck (Kafka away): keep memory bounded, say what was lost.
            self._dropped += 1
            if self._dropped == 1:
                log.warning("provenance buffer full (%d items): dropping items", MAX_BUFFERED)
            return
        # Flat dataclasses of scalars: their __dict__ is the item, no deep copy.
        self._items.append((key, vars(item)))
        if len(self._items) >= FLUSH_ITEMS:
            self._flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush_soon)

    def _flush_soon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="ktb-provenance-flush")
            self._flushing.add_done_callback(_log_failed_flush)

    async def _flush(self) -> None:
        # One flush task at a time keeps each partition's batches in the order
        # written; items added meanwhile go in the next round of the loop.
        while self._items:
            items, self._items = self._items, []
            if self._dropped:
                log.warning("provenance buffer: %d items dropped while full", self._dropped)
                self._dropped = 0
            await self._send(items)

    async def flush(self) -> None:
        """Send everything buffered now (its acknowledgement is not awaited)."""
        self._flush_soon()
        if self._flushing is not None:
            # Waited for, not awaited: its failure is its own callback's to log.
            await asyncio.wait([self._flushing])

    async def close(self) -> None:
        """Send what is buffered and take no more items; with Kafka away, what is still
        buffered after ``close_timeout_s`` is given up (logged) rather than holding the
        process past its shutdown budget."""
        self._closed = True
        try:
            await asyncio.wait_for(self.flush(), self.close_timeout_s)
        except TimeoutError:
            if self._flushing is not None:
                self._flushing.cancel()
            log.warning(
                "provenance not sent within %.0fs of closing: %d items given up",
                self.close_timeout_s,
                len(self._items),
            )

    async def _send(self, items: list[tuple[str | None, dict[str, Any]]]) -> None:
        try:
            partitions = sorted(await self.producer.partitions_for(self.topic))
        except KafkaError as exc:
            log.warning("could not record %d provenance items: %s", len(items), exc)
            return
        groups: dict[int, list[dict[str, Any]]] = {}
        count = len(partitions)
        for key, item in items:
            if key:
                # The partition Kafka's default partitioner gives a record keyed ``key``.
                slot = (murmur2(key.encode()) & 0x7FFFFFFF) % count
            else:
                # No key, no order to keep: spread them.
                slot = self._unkeyed = (self._unkeyed + 1) % count
            groups.setdefault(partitions[slot], []).append(item)
        for partition, group in groups.items():
            await self._send_partition(partition, group)

    async def _send_partition(self, partition: int, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), FLUSH_ITEMS):
            for value in _records(items[start : start + FLUSH_ITEMS]):
                try:
                    delivery = await self.producer.send(
                        self.topic, value=value, partition=partition
                    )
                except KafkaError as exc:
                    # The partition is stuck: the rest of its items would each wait as long.
                    log.warning(
                        "could not record %d provenance items to partition %d: %s",
                        len(items) - start,
                        partition,
                        exc,
                    )
                    return
                delivery.add_done_callback(_log_failed_delivery)

    def event(self, record: RecordLike, event: Event | None, result: Result) -> None:
        """Record what happened to one consumed record."""
        event_id = event.id if event else ce_attribute(record.headers, "id")
        self._add(
            event_id,
            EventProvenance(
                event_id=event_id,
                event_type=event.type if event else ce_attribute(record.headers, "type"),
                tenant_id=event.tenant_id if event else ce_attribute(record.headers, TENANT),
                key=record.key.decode("utf-8", "replace") if record.key is not None else None,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                route=result.route,
                action=result.action,
                outcome=result.outcome.value,
                workflow_id=result.workflow_id,
                run_id=result.run_id,
                detail=result.detail,
                at=_now(),
                via=self.via,
            ),
        )

    def published(
        self,
        *,
        ce_id: str,
        type: str,
        topic: str,
        partition: int,
        offset: int,
        published_kind: str,
        workflow_id: str,
        causation_id: str | None,
        tenant_id: str | None,
    ) -> None:
        """Record one event published by a workflow activity."""
        self._add(
            workflow_id,
            PublishedProvenance(
                ce_id=ce_id,
                type=type,
                topic=topic,
                partition=partition,
                offset=offset,
                published_kind=published_kind,
                workflow_id=workflow_id,
                causation_id=causation_id,
                tenant_id=tenant_id,
                at=_now(),
            ),
        )


def _records(items: list[dict[str, Any]]) -> list[bytes]:
    """``items`` as batch records, split in halves while one is larger than Kafka takes."""
    value = _dumps({"kind": BATCH, "items": items}).encode()
    if len(value) <= MAX_RECORD_BYTES or len(items) == 1:
        return [value]
    half = len(items) // 2
    return _records(items[:half]) + _records(items[half:])


def _log_failed_flush(task: asyncio.Task[None]) -> None:
    """A flush runs on its own task: whatever ends it is logged, never raised at a caller."""
    if not task.cancelled() and task.exception() is not None:
        log.error("could not record provenance", exc_info=task.exception())


def _log_failed_delivery(delivery: asyncio.Future[Any]) -> None:
    """Delivery is not awaited on the hot path; a failure is logged, never raised."""
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("could not record provenance: %s", delivery.exception())
