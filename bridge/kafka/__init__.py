"""Kafka for every ktb process: clients built from settings, their security, topics.

``clients`` builds every producer, consumer and admin client, so connection and
security options (``security``) apply to all of them alike; ``topics`` creates and
grows topics. The names most callers need are re-exported here.
"""

from bridge.kafka.clients import (
    admin,
    client_options,
    consumer,
    is_permanent,
    is_too_large,
    producer,
    start,
    stop_consumer,
)
from bridge.kafka.topics import ensure_topics

__all__ = [
    "admin",
    "client_options",
    "consumer",
    "ensure_topics",
    "is_permanent",
    "is_too_large",
    "producer",
    "start",
    "stop_consumer",
]
