"""``python -m services.notifications worker``: the outcome-topic consumer, and
``CustomerDigest`` with its activity on the ``notifications`` task queue."""

from __future__ import annotations

from bridge import Settings
from services.common import ConsumerWorker, run_service_consumer
from services.config import ServicesConfig
from services.notifications.consumer import SCHEMA, Digests, Notifications
from services.notifications.workflows import CustomerDigest


async def main(settings: Settings) -> None:
    """Consume and host the digest workflow until SIGTERM."""
    config = ServicesConfig()
    await run_service_consumer(
        settings,
        "notifications",
        SCHEMA,
        [config.outcome_topic, config.compensation_topic],
        config.notifications_group,
        lambda store: Notifications(store).record,
        ConsumerWorker(
            config.notifications_queue,
            [CustomerDigest],
            lambda store: [Digests(store).send],
        ),
    )
