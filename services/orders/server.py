"""``python -m services.orders server``: the orders read model over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from bridge import Settings
from services import common
from services.orders.activities import SCHEMA
from services.store import Store


def create_app(store: Store) -> FastAPI:
    """The orders HTTP API over ``store``."""
    app = common.app("orders")

    @app.get("/orders")
    async def list_orders(
        status: str | None = None, customer_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Orders, most recently updated first, optionally by status and by customer."""
        return await store.rows(
            "SELECT * FROM orders WHERE (? IS NULL OR status = ?)"
            " AND (? IS NULL OR customer_id = ?) ORDER BY updated_at DESC LIMIT ?",
            status,
            status,
            customer_id,
            customer_id,
            max(1, min(limit, 1000)),
        )

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> dict[str, Any]:
        """One order: status, totals, the workflow that runs it."""
        row = await store.row("SELECT * FROM orders WHERE order_id = ?", order_id)
        if row is None:
            raise common.not_found(f"order {order_id}")
        return row

    return app


async def main(settings: Settings) -> None:
    """Serve until SIGTERM."""
    await common.run_service_server(settings, "orders", SCHEMA, create_app)
