"""``python -m services.inventory server``: stock levels and reservations over HTTP."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from bridge import Settings
from services import common
from services.inventory.activities import SCHEMA
from services.store import Store


class StockLevel(BaseModel):
    """The stock of one SKU."""

    available: int = Field(ge=0)


def _reservation(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "items": json.loads(row["items"])}


def create_app(store: Store) -> FastAPI:
    """The inventory HTTP API over ``store``."""
    app = common.app("inventory")

    @app.get("/stock")
    async def list_stock() -> list[dict[str, Any]]:
        """Every SKU with its available quantity."""
        return await store.rows("SELECT sku, available FROM stock ORDER BY sku")

    @app.get("/stock/{sku}")
    async def get_stock(sku: str) -> dict[str, Any]:
        """One SKU's available quantity."""
        row = await store.row("SELECT sku, available FROM stock WHERE sku = ?", sku)
        if row is None:
            raise common.not_found(f"sku {sku}")
        return row

    @app.put("/stock/{sku}")
    async def put_stock(sku: str, level: StockLevel) -> dict[str, Any]:
        """Set a SKU's available quantity."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO stock (sku, available) VALUES (?, ?)"
                " ON CONFLICT(sku) DO UPDATE SET available = excluded.available",
                (sku, level.available),
            )

        await store.run(tx)
        return {"sku": sku, "available": level.available}

    @app.get("/reservations")
    async def list_reservations(status: str | None = None) -> list[dict[str, Any]]:
        """Reservations, newest first, optionally by status (reserved, released)."""
        rows = await store.rows(
            "SELECT * FROM reservations WHERE ? IS NULL OR status = ? ORDER BY created_at DESC",
            status,
            status,
        )
        return [_reservation(r) for r in rows]

    @app.get("/reservations/{order_id}")
    async def get_reservation(order_id: str) -> dict[str, Any]:
        """The reservation of one order."""
        row = await store.row("SELECT * FROM reservations WHERE order_id = ?", order_id)
        if row is None:
            raise common.not_found(f"reservation of order {order_id}")
        return _reservation(row)

    return app


async def main(settings: Settings) -> None:
    """Serve until SIGTERM."""
    await common.run_service_server(settings, "inventory", SCHEMA, create_app)
