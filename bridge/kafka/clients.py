"""Kafka client construction from settings, in one place.

Every producer, consumer and admin client of a ktb process is built here, so
connection and security options apply to all of them alike.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from bridge.backoff import Backoff
from bridge.kafka import security
from bridge.settings import Settings

log = logging.getLogger("ktb.kafka")

PERMANENT_ERRORS: tuple[type[KafkaError], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
    kafka_errors.InvalidTopicError,
    kafka_errors.PolicyViolationError,
    kafka_errors.InvalidTimestampError,
    kafka_errors.CorruptRecordException,
    kafka_errors.UnsupportedForMessageFormatError,
)
"""Produce errors no retry can mend: the record (its size, timestamp, form) or the
client's rights are wrong. aiokafka's own ``retriable`` flag cannot tell this apart
(it calls a request timeout not retriable)."""

TOO_LARGE_ERRORS: tuple[type[KafkaError], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
)
"""The record is larger than the producer's ``max_request_size`` or the topic's
``max.message.bytes``."""


def is_permanent(exc: BaseException) -> bool:
    """Whether a Kafka produce error will fail the same way on every attempt."""
    return isinstance(exc, PERMANENT_ERRORS)


def is_too_large(exc: BaseException) -> bool:
    """Whether a Kafka produce error says the record is too large to write."""
    return isinstance(exc, TOO_LARGE_ERRORS)


def client_options(settings: Settings) -> dict[str, Any]:
    """Options shared by every Kafka client: bootstrap servers, SASL, TLS, allowlisted extras.

    Raises ``ConfigError`` for an incomplete security setup or a refused extra option.
    """
    return {"bootstrap_servers": settings.kafka_bootstrap, **security.kafka_options(settings)}


async def start(client: AIOKafkaProducer | AIOKafkaConsumer, settings: Settings) -> None:
    """Start a client, waiting out a broker that is down (a restart) with backoff.

    Refused credentials or a failed TLS handshake raise ``KafkaAuthError`` at once;
    a broker still unreachable after ``connect_timeout_s`` raises the connection error.
    """
    backoff = Backoff(
        settings.retry_initial_s, settings.retry_max_s, deadline_s=settings.connect_timeout_s
    )
    while True:
        try:
            # A failed start fails in bootstrap, before anything else is started,
            # so the same client can try again.
            await client.start()
            return
        except KafkaConnectionError as exc:
            problem = await security.diagnose(settings)
            if problem is not None or backoff.exhausted:
                await client.stop()
                if problem is not None:
                    raise problem from exc
                raise
            delay = backoff.next()
            log.warning(
                "Kafka at %s unreachable, retrying in %.1fs", settings.kafka_bootstrap, delay
            )
            await asyncio.sleep(delay)


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """The idempotent producer (``acks=all``) every ktb process uses."""
    options: dict[str, Any] = {
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "request_timeout_ms": 15000,
    }
    # Allowlisted extras (e.g. request.timeout.ms) override these defaults; call sites win.
    options.update(client_options(settings))
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer; ``group_id=None`` (the default) reads without a group."""
    options.setdefault("group_id", None)
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topics, **{**client_options(settings), **options})


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    """An admin client."""
    return AIOKafkaAdminClient(**{**client_options(settings), **options})


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer, tolerating aiokafka's group-less close quirk.

    A consumer without a group cancels an internal task that may not have run
    yet, and ``stop()`` then re-raises that task's ``CancelledError``. Only a
    cancellation aimed at the caller's own task is propagated.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
