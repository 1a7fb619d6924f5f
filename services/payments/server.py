"""``python -m services.payments server``: payments and charge attempts over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from bridge import Settings
from services import common
from services.payments.activities import SCHEMA
from services.store import Store


def create_app(store: Store) -> FastAPI:
    """The payments HTTP API over ``store``."""
    app = common.app("payments")

    @app.get("/payments")
    async def list_payments(
        status: str | None = None, customer_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Payments, newest first, optionally by status and by customer."""
        return await store.rows(
            "SELECT * FROM payments WHERE (? IS NULL OR status = ?)"
            " AND (? IS NULL OR customer_id = ?) ORDER BY created_at DESC",
            status,
            status,
            customer_id,
            customer_id,
        )

    @app.get("/payments/{order_id}")
    async def get_payment(order_id: str) -> dict[str, Any]:
        """The payment of one order with every charge attempt."""
        row = await store.row("SELECT * FROM payments WHERE order_id = ?", order_id)
        attempts = await store.rows(
            "SELECT attempt, token, result, at FROM attempts WHERE order_id = ? ORDER BY attempt",
            order_id,
        )
        if row is None and not attempts:
            raise common.not_found(f"payment of order {order_id}")
        return {"order_id": order_id, "payment": row, "attempts": attempts}

    return app


async def main(settings: Settings) -> None:
    """Serve until SIGTERM."""
    await common.run_service_server(settings, "payments", SCHEMA, create_app)
