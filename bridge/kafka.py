"""Kafka client construction from settings, in one place.

Every producer, consumer and admin client of a ktb process is built here, so
connection and security options apply to all of them alike.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bridge.settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Options shared by every Kafka client (bootstrap servers, security)."""
    return {"bootstrap_servers": settings.kafka_bootstrap}


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """The idempotent producer (``acks=all``) every ktb process uses."""
    options: dict[str, Any] = {
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "request_timeout_ms": 15000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**client_options(settings), **options)


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer; ``group_id=None`` (the default) reads without a group."""
    options.setdefault("group_id", None)
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topics, **client_options(settings), **options)


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    """An admin client."""
    return AIOKafkaAdminClient(**client_options(settings), **options)
