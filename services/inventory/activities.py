"""Inventory activities: reserve and release stock, idempotent per order."""

from __future__ import annotations

import json
import sqlite3

from temporalio import activity

from bridge import ValidationError
from services.inventory import RELEASE, RESERVE, ReleaseRequest, Reservation, ReserveRequest
from services.store import Store, as_json, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY,
    available INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL,
    items TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    released_at TEXT
);
"""


class OutOfStock(ValidationError):
    """Not enough stock of a SKU for the order."""

    error_type = "out_of_stock"


class Inventory:
    """The inventory service's activities over its own database."""

    def __init__(self, store: Store, default_stock: int = 1000) -> None:
        self.store = store
        self.default_stock = default_stock

    @activity.defn(name=RESERVE)
    async def reserve(self, req: ReserveRequest) -> Reservation:
        """Hold stock for every item; a repeated call returns the same reservation."""

        def tx(conn: sqlite3.Connection) -> Reservation:
            row = conn.execute(
                "SELECT reservation_id, status FROM reservations WHERE order_id = ?",
                (req.order_id,),
            ).fetchone()
            if row is not None:
                if row["status"] != "reserved":
                    raise ValidationError(
                        f"reservation of order {req.order_id} was already released",
                        order_id=req.order_id,
                    )
                return Reservation(row["reservation_id"], req.order_id)
            for item in req.items:
                if item.quantity <= 0:
                    raise ValidationError(f"quantity of {item.sku} must be positive", sku=item.sku)
                conn.execute(
                    "INSERT OR IGNORE INTO stock (sku, available) VALUES (?, ?)",
                    (item.sku, self.default_stock),
                )
                available = conn.execute(
                    "SELECT available FROM stock WHERE sku = ?", (item.sku,)
                ).fetchone()["available"]
                if available < item.quantity:
                    raise OutOfStock(
                        f"{item.sku}: {item.quantity} wanted, {available} available",
                        sku=item.sku,
                    )
                conn.execute(
                    "UPDATE stock SET available = available - ? WHERE sku = ?",
                    (item.quantity, item.sku),
                )
            reservation_id = f"res-{req.order_id}"
            conn.execute(
                "INSERT INTO reservations (order_id, reservation_id, items, status, created_at)"
                " VALUES (?, ?, ?, 'reserved', ?)",
                (
                    req.order_id,
                    reservation_id,
                    as_json([{"sku": i.sku, "quantity": i.quantity} for i in req.items]),
                    now(),
                ),
            )
            return Reservation(reservation_id, req.order_id)

        return await self.store.run(tx)

    @activity.defn(name=RELEASE)
    async def release(self, req: ReleaseRequest) -> str:
        """Return the held stock; releasing twice (or nothing) changes nothing."""

        def tx(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                "SELECT items, status FROM reservations WHERE order_id = ?", (req.order_id,)
            ).fetchone()
            if row is None:
                return f"no reservation for order {req.order_id}"
            if row["status"] == "released":
                return f"reservation {req.reservation_id} already released"
            items = json.loads(row["items"])
            for item in items:
                conn.execute(
                    "UPDATE stock SET available = available + ? WHERE sku = ?",
                    (item["quantity"], item["sku"]),
                )
            conn.execute(
                "UPDATE reservations SET status = 'released', released_at = ? WHERE order_id = ?",
                (now(), req.order_id),
            )
            lines = ", ".join(f"{i['quantity']} x {i['sku']}" for i in items)
            return f"released reservation {req.reservation_id} ({lines})"

        return await self.store.run(tx)
