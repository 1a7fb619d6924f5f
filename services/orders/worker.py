"""``python -m services.orders worker``: ``OrderFulfillment`` and the ``orders.*`` activities."""

from __future__ import annotations

from bridge import FaultInterceptor, Metrics, Settings, run_worker
from services.config import ServicesConfig
from services.orders.activities import SCHEMA, Orders
from services.orders.workflows import OrderFulfillment
from services.store import Store


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    config = ServicesConfig()
    store = Store(config.database("orders", settings), SCHEMA)
    orders = Orders(store)
    metrics = Metrics()
    try:
        await run_worker(
            settings,
            config.orders_queue,
            [OrderFulfillment],
            [orders.record],
            metrics,
            interceptors=[FaultInterceptor(config.retry_scale)],
        )
    finally:
        store.close()
