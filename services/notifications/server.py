"""``python -m services.notifications server``: recorded notifications over HTTP."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from bridge import Settings
from services import common
from services.notifications.consumer import SCHEMA
from services.store import Store


def _notification(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "data": json.loads(row["data"])}


def create_app(store: Store) -> FastAPI:
    """The notifications HTTP API over ``store``."""
    app = common.app("notifications")

    @app.get("/notifications")
    async def list_notifications(
        order_id: str | None = None, type: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Notifications in the order they were received, optionally by order and type."""
        rows = await store.rows(
            "SELECT * FROM notifications WHERE (? IS NULL OR order_id = ?)"
            " AND (? IS NULL OR type = ?) ORDER BY received_at, rowid LIMIT ?",
            order_id,
            order_id,
            type,
            type,
            max(1, min(limit, 1000)),
        )
        return [_notification(r) for r in rows]

    @app.get("/notifications/{ce_id}")
    async def get_notification(ce_id: str) -> dict[str, Any]:
        """One notification by its event id, with how often the event was delivered."""
        row = await store.row("SELECT * FROM notifications WHERE ce_id = ?", ce_id)
        if row is None:
            raise common.not_found(f"notification {ce_id}")
        return _notification(row)

    return app


async def main(settings: Settings) -> None:
    """Serve until SIGTERM."""
    await common.run_service_server(settings, "notifications", SCHEMA, create_app)
