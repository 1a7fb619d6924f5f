"""``python -m services.notifications worker``: the outcome-topic consumer."""

from __future__ import annotations

import asyncio

from bridge import SchemaCatalog, Settings, open_telemetry, stop_on_signals
from services.config import ServicesConfig
from services.notifications.consumer import SCHEMA, Notifications, consume
from services.store import Store


async def main(settings: Settings) -> None:
    """Consume until SIGTERM."""
    config = ServicesConfig()
    store = Store(config.database("notifications", settings), SCHEMA)
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    try:
        # No Temporal here; /metrics (KTB_METRICS_PORT) still shows the process is alive.
        with open_telemetry(settings, "notifications"):
            await consume(
                settings,
                Notifications(store, catalog),
                [config.outcome_topic, config.compensation_topic],
                config.notifications_group,
                stop,
            )
    finally:
        store.close()
