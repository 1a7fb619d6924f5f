"""``python -m services.inventory worker``: the ``inventory.*`` activities."""

from __future__ import annotations

from bridge import FaultInterceptor, Metrics, Settings, run_worker
from services.config import ServicesConfig
from services.inventory.activities import SCHEMA, Inventory
from services.store import Store


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    config = ServicesConfig()
    store = Store(config.database("inventory", settings), SCHEMA)
    inventory = Inventory(store, config.default_stock)
    metrics = Metrics()
    try:
        await run_worker(
            settings,
            config.inventory_queue,
            [],
            [inventory.reserve, inventory.release],
            metrics,
            interceptors=[FaultInterceptor(config.retry_scale)],
        )
    finally:
        store.close()
