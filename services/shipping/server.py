"""``python -m services.shipping server``: shipments over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from bridge import Settings
from services import common
from services.shipping.activities import SCHEMA
from services.store import Store


def create_app(store: Store) -> FastAPI:
    """The shipping HTTP API over ``store``."""
    app = common.app("shipping")

    @app.get("/shipments")
    async def list_shipments(customer_id: str | None = None) -> list[dict[str, Any]]:
        """Shipments, newest first, optionally by customer."""
        return await store.rows(
            "SELECT * FROM shipments WHERE ? IS NULL OR customer_id = ? ORDER BY created_at DESC",
            customer_id,
            customer_id,
        )

    @app.get("/shipments/{order_id}")
    async def get_shipment(order_id: str) -> dict[str, Any]:
        """The shipment of one order."""
        row = await store.row("SELECT * FROM shipments WHERE order_id = ?", order_id)
        if row is None:
            raise common.not_found(f"shipment of order {order_id}")
        return row

    return app


async def main(settings: Settings) -> None:
    """Serve until SIGTERM."""
    await common.run_service_server(settings, "shipping", SCHEMA, create_app)
