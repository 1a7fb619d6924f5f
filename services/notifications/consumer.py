"""Consume outcome and compensation events; record one notification per ``ce_id``."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord

from bridge import Event, PermanentError, SchemaCatalog, Settings, decode_record, kafka
from services.store import Store, now

log = logging.getLogger("services.notifications")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    ce_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    order_id TEXT,
    message TEXT NOT NULL,
    correlation_id TEXT,
    causation_id TEXT,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    data TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_order ON notifications (order_id);
"""


def message_for(event: Event) -> str:
    """What the customer would be told about one event."""
    data = event.data
    order = data.get("order_id") or event.key or "?"
    kind = event.type.rsplit(".", 1)[-1]
    if kind == "completed":
        return f"Order {order} is confirmed and on its way (shipment {data.get('shipment_id')})."
    if kind == "compensated":
        undone = ", ".join(data.get("compensated_steps") or [])
        return f"Order {order} could not be completed ({data.get('reason')}); undone: {undone}."
    if kind == "failed":
        return f"Order {order} could not be completed ({data.get('reason')})."
    if kind == "step_compensated":
        return f"Order {order}: {data.get('detail')}."
    return f"Order {order}: {event.type}."


class Notifications:
    """Records notifications in the service's database, deduped by ``ce_id``."""

    def __init__(self, store: Store, catalog: SchemaCatalog) -> None:
        self.store = store
        self.catalog = catalog

    async def record(self, records: Sequence[ConsumerRecord[Any, Any]]) -> int:
        """Record a batch; return how many notifications are new."""
        rows = []
        for r in records:
            try:
                event = decode_record(
                    self.catalog,
                    value=r.value,
                    headers=r.headers,
                    key=r.key,
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                )
            except PermanentError as exc:
                log.warning(
                    "skipping a record that is not an event: %s",
                    exc.message,
                    extra={"topic": r.topic, "partition": r.partition, "offset": r.offset},
                )
                continue
            rows.append(
                (
                    event.id,
                    event.type,
                    event.data.get("order_id") or event.key,
                    message_for(event),
                    event.correlation_id,
                    event.causation_id,
                    r.topic,
                    r.partition,
                    r.offset,
                    json.dumps(event.data, default=str),
                    now(),
                )
            )

        def tx(conn: sqlite3.Connection) -> int:
            new = 0
            for row in rows:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO notifications (ce_id, type, order_id, message,"
                    ' correlation_id, causation_id, topic, partition, "offset", data,'
                    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                if cur.rowcount:
                    new += 1
                else:
                    conn.execute(
                        "UPDATE notifications SET deliveries = deliveries + 1 WHERE ce_id = ?",
                        (row[0],),
                    )
            return new

        return await self.store.run(tx) if rows else 0


async def consume(
    settings: Settings,
    notifications: Notifications,
    topics: Sequence[str],
    group_id: str,
    stop: asyncio.Event,
) -> None:
    """Consume ``topics`` as ``group_id`` until ``stop`` is set; commit after recording."""
    consumer = kafka.consumer(settings, *topics, group_id=group_id, auto_offset_reset="earliest")
    await kafka.start(consumer, settings)
    log.info("notifications consuming %s as group %s", ", ".join(topics), group_id)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            new = await notifications.record(records)
            if new:
                log.info("recorded %d notification(s)", new)
            try:
                await consumer.commit()
            except CommitFailedError as exc:
                # A rebalance took the partitions: the next owner re-reads, ce_id dedupes.
                log.warning("commit failed after a rebalance: %s", exc)
    finally:
        await kafka.stop_consumer(consumer)
