"""What the notifications service makes of an event: one notification per ``ce_id``.

The worker feeds it the outcome and compensation topics through
``services.common.consume_events``, which decodes each record with the library's
decoder; a record read again (a retried publication, a rebalance) counts as one
more delivery of the same notification.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from temporalio import activity

from bridge import Event
from services.notifications import SEND_DIGEST, Digest
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
CREATE TABLE IF NOT EXISTS digests (
    digest_id TEXT PRIMARY KEY,
    customer_id TEXT,
    lines TEXT NOT NULL,
    event_ids TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
"""


def message_for(event: Event) -> str:
    """What the customer would be told about one event."""
    return outcome_message(event.type, event.data, event.key)


def outcome_message(event_type: str, data: Mapping[str, Any], key: str | None = None) -> str:
    """What the customer would be told about one event of ``event_type`` (a digest line too)."""
    order = data.get("order_id") or key or "?"
    kind = event_type.rsplit(".", 1)[-1]
    if kind == "completed":
        return f"Order {order} is confirmed and on its way (shipment {data.get('shipment_id')})."
    if kind == "compensated":
        undone = ", ".join(data.get("compensated_steps") or [])
        return f"Order {order} could not be completed ({data.get('reason')}); undone: {undone}."
    if kind == "failed":
        return f"Order {order} could not be completed ({data.get('reason')})."
    if kind == "step_compensated":
        return f"Order {order}: {data.get('detail')}."
    return f"Order {order}: {event_type}."


class Notifications:
    """Records notifications in the service's database, deduped by ``ce_id``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, events: Sequence[Event]) -> int:
        """Record a batch of events read from Kafka; return how many notifications are new."""
        rows = [
            (
                event.id,
                event.type,
                event.data.get("order_id") or event.key,
                message_for(event),
                event.correlation_id,
                event.causation_id,
                event.topic,
                event.partition,
                event.offset,
                json.dumps(event.data, default=str),
                now(),
            )
            for event in events
        ]

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

        new = await self.store.run(tx) if rows else 0
        if new:
            log.info("recorded %d notification(s)", new)
        return new


class Digests:
    """Sends (records) customer digests (``CustomerDigest``), once per digest id."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name=SEND_DIGEST)
    async def send(self, digest: Digest) -> bool:
        """Record the digest; ``False`` when a retried call finds it sent already."""

        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO digests (digest_id, customer_id, lines, event_ids,"
                " sent_at) VALUES (?, ?, ?, ?, ?)",
                (
                    digest.digest_id,
                    digest.customer_id,
                    json.dumps(digest.lines),
                    json.dumps(digest.event_ids),
                    now(),
                ),
            )
            return bool(cur.rowcount)

        sent = await self.store.run(tx)
        if sent:
            log.info("digest %s: %d line(s)", digest.digest_id, len(digest.lines))
        return sent
