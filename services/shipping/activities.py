"""Shipping activities: create a shipment, idempotent per order."""

from __future__ import annotations

import sqlite3

from temporalio import activity

from bridge import ValidationError
from services.shipping import CREATE_SHIPMENT, Shipment, ShipmentRequest
from services.store import Store, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY,
    shipment_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shipments_customer ON shipments (customer_id);
"""


class Shipping:
    """The shipping service's activities over its own database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name=CREATE_SHIPMENT)
    async def create_shipment(self, req: ShipmentRequest) -> Shipment:
        """Create the order's shipment; a repeated call returns the same one."""
        if req.item_count <= 0:
            raise ValidationError("nothing to ship", order_id=req.order_id)

        def tx(conn: sqlite3.Connection) -> Shipment:
            shipment_id = f"shp-{req.order_id}"
            conn.execute(
                "INSERT OR IGNORE INTO shipments"
                " (order_id, shipment_id, customer_id, item_count, status, created_at)"
                " VALUES (?, ?, ?, ?, 'created', ?)",
                (req.order_id, shipment_id, req.customer_id, req.item_count, now()),
            )
            return Shipment(shipment_id, req.order_id)

        return await self.store.run(tx)
