"""``python -m services.notifications worker``: the outcome-topic consumer."""

from __future__ import annotations

from bridge import Settings
from services.common import run_service_consumer
from services.config import ServicesConfig
from services.notifications.consumer import SCHEMA, Notifications


async def main(settings: Settings) -> None:
    """Consume until SIGTERM."""
    config = ServicesConfig()
    await run_service_consumer(
        settings,
        "notifications",
        SCHEMA,
        [config.outcome_topic, config.compensation_topic],
        config.notifications_group,
        lambda store: Notifications(store).record,
    )
