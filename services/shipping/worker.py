"""``python -m services.shipping worker``: the ``shipping.*`` activities."""

from __future__ import annotations

from bridge import FaultInterceptor, Metrics, Settings, run_worker
from services.config import ServicesConfig
from services.shipping.activities import SCHEMA, Shipping
from services.store import Store


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    config = ServicesConfig()
    store = Store(config.database("shipping", settings), SCHEMA)
    shipping = Shipping(store)
    metrics = Metrics()
    try:
        await run_worker(
            settings,
            config.shipping_queue,
            [],
            [shipping.create_shipment],
            metrics,
            interceptors=[FaultInterceptor(config.retry_scale)],
        )
    finally:
        store.close()
