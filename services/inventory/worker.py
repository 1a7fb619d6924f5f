"""``python -m services.inventory worker``: the ``inventory.*`` activities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge import Settings
from services.common import run_service_worker
from services.config import ServicesConfig
from services.inventory.activities import SCHEMA, Inventory
from services.store import Store


def activities(config: ServicesConfig, store: Store) -> list[Callable[..., Any]]:
    """The ``inventory.*`` activities over the inventory database."""
    inventory = Inventory(store, config.default_stock)
    return [inventory.reserve, inventory.release]


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    await run_service_worker(settings, "inventory", SCHEMA, activities)
