"""Orders activities: keep the orders read model up to date."""

from __future__ import annotations

import sqlite3

from temporalio import activity

from services.orders import RECORD, OrderRecord
from services.store import Store, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    status TEXT NOT NULL,
    customer_id TEXT,
    total_cents INTEGER,
    currency TEXT,
    detail TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_customer ON orders (customer_id);
"""


class Orders:
    """The orders service's activities over its own database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name=RECORD)
    async def record(self, order: OrderRecord) -> None:
        """Insert or update the order's row (fields left ``None`` keep their value)."""

        def tx(conn: sqlite3.Connection) -> None:
            stamp = now()
            conn.execute(
                "INSERT INTO orders (order_id, workflow_id, status, customer_id, total_cents,"
                " currency, detail, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(order_id) DO UPDATE SET status = excluded.status,"
                " workflow_id = excluded.workflow_id,"
                " customer_id = COALESCE(excluded.customer_id, customer_id),"
                " total_cents = COALESCE(excluded.total_cents, total_cents),"
                " currency = COALESCE(excluded.currency, currency),"
                " detail = excluded.detail, updated_at = excluded.updated_at",
                (
                    order.order_id,
                    order.workflow_id,
                    order.status,
                    order.customer_id,
                    order.total_cents,
                    order.currency,
                    order.detail,
                    stamp,
                    stamp,
                ),
            )

        await self.store.run(tx)
