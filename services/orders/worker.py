"""``python -m services.orders worker``: ``OrderFulfillment`` and the ``orders.*`` activities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge import Settings
from services.common import run_service_worker
from services.config import ServicesConfig
from services.orders.activities import SCHEMA, Orders
from services.orders.workflows import OrderFulfillment
from services.store import Store


def activities(config: ServicesConfig, store: Store) -> list[Callable[..., Any]]:
    """The ``orders.*`` activities over the orders database."""
    return [Orders(store).record]


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    await run_service_worker(settings, "orders", SCHEMA, activities, [OrderFulfillment])
