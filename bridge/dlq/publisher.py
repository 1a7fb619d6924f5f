"""Dead letters: the original record plus why it failed, on ``<topic>.dlq``.

A dead letter must always be writable, or its partition could never commit past
the record. The error text is bounded, and a record too large to copy (its value
plus the letter's headers over the producer's ``max_request_size`` or the DLQ
topic's ``max.message.bytes``) becomes a letter of type ``too_large_to_copy``:
no value, the original key and CloudEvents id/type/tenant headers, its
coordinates, and the original error type and message in headers of their own.
The record itself stays readable in its topic until retention; ``ktb dlq show``
and redrive read it from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge import kafka
from bridge.envelope import RecordLike, record_size
from bridge.errors import BridgeError, TransientError

log = logging.getLogger("ktb.dlq")

ERROR_TYPE = "ktb_error_type"
ERROR_MESSAGE = "ktb_error_message"
ORIGINAL_TOPIC = "ktb_original_topic"
ORIGINAL_PARTITION = "ktb_original_partition"
ORIGINAL_OFFSET = "ktb_original_offset"
FAILED_AT = "ktb_failed_at"
REDRIVE_COUNT = "ktb_redrive_count"
REDRIVE_OF = "ktb_redrive_of"
"""On a republished record: ``<dlq topic>:<partition>:<offset>`` of the letter it came from."""
ORIGINAL_ERROR_TYPE = "ktb_original_error_type"
ORIGINAL_ERROR_MESSAGE = "ktb_original_error_message"
ORIGINAL_SIZE = "ktb_original_size"
ERROR_HEADERS = frozenset(
    {ERROR_TYPE, ERROR_MESSAGE, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, FAILED_AT}
)
"""The headers every dead letter carries."""
LETTER_HEADERS = ERROR_HEADERS | {ORIGINAL_ERROR_TYPE, ORIGINAL_ERROR_MESSAGE, ORIGINAL_SIZE}
"""Every header a dead letter adds to the record's own (removed again on redrive)."""
TOO_LARGE_TO_COPY = "too_large_to_copy"
SUFFIX = ".dlq"
MAX_MESSAGE_BYTES = 2000
"""Bound of an error message header, in UTF-8 bytes."""
KEPT_HEADERS = frozenset(
    {"ce_id", "ce_type", "ce_tenantid", "ce_source", "ce_specversion", "content-type"}
)
"""Original headers (lower-cased names) a ``too_large_to_copy`` letter keeps: enough
for listings, tenant filtering and ``dlq show`` to name the event."""


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + SUFFIX


def bounded(text: str, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes at a character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def letter_name(dlq_topic: str, partition: int, offset: int) -> str:
    """How failure policies name a letter: ``<dlq topic>:<partition>:<offset>``."""
    return f"{dlq_topic}:{partition}:{offset}"


@dataclass(frozen=True)
class WrittenLetter:
    """Where the publisher wrote a dead letter."""

    topic: str
    partition: int
    offset: int
    error_type: str
    """``too_large_to_copy`` when only the record's coordinates could be written."""

    @property
    def name(self) -> str:
        """The letter's name (``letter_name``)."""
        return letter_name(self.topic, self.partition, self.offset)


class DeadLetterPublisher:
    """Publishes failed records plus ``ktb_*`` error headers; waits for the ack."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(self, record: RecordLike, error: BridgeError) -> WrittenLetter:
        """Send ``record`` to its DLQ; raise ``TransientError`` if Kafka does not take it.

        A record too large to copy is written as a ``too_large_to_copy`` letter; any
        other Kafka error (broker down, timeout, no rights) is transient: the
        partition pauses and the letter is tried again, never lost.
        """
        topic = dlq_topic(record.topic)
        failed_at = datetime.now(UTC).isoformat().encode()
        coordinates = [
            (ORIGINAL_TOPIC, record.topic.encode()),
            (ORIGINAL_PARTITION, str(record.partition).encode()),
            (ORIGINAL_OFFSET, str(record.offset).encode()),
            (FAILED_AT, failed_at),
        ]
        # REDRIVE_COUNT is not an error header: a redriven record that fails again
        # comes back with its count, which is what lets redrive stop at a maximum.
        own = [(k, v) for k, v in record.headers if k not in LETTER_HEADERS]
        headers = [
            *own,
            (ERROR_TYPE, error.error_type.encode()),
            (ERROR_MESSAGE, bounded(error.message)),
            *coordinates,
        ]
        try:
            return await self._send(topic, record.value, record.key, headers, error.error_type)
        except KafkaError as exc:
            if not kafka.is_too_large(exc):
                raise TransientError(f"could not publish to {topic}: {exc}") from exc
            reason = exc
        size = record_size(record)
        log.warning(
            "record of %d bytes too large to copy to %s; writing its coordinates", size, topic,
            extra={"topic": record.topic, "partition": record.partition,
                   "offset": record.offset, "error_type": error.error_type},
        )  # fmt: skip
        message = (
            f"the record ({size} bytes) does not fit {topic} ({reason}); it stays in "
            f"{record.topic}[{record.partition}]@{record.offset} until retention"
        )
        # An empty value, not a null one: a null value is a tombstone to compaction.
        stub = [
            (ERROR_TYPE, TOO_LARGE_TO_COPY.encode()),
            (ERROR_MESSAGE, bounded(message)),
            *coordinates,
            (ORIGINAL_ERROR_TYPE, error.error_type.encode()),
            (ORIGINAL_ERROR_MESSAGE, bounded(error.message)),
            (ORIGINAL_SIZE, str(size).encode()),
        ]
        kept = [(k, v) for k, v in own if k.lower() in KEPT_HEADERS or k == REDRIVE_COUNT]
        try:
            return await self._send(topic, b"", record.key, [*kept, *stub], TOO_LARGE_TO_COPY)
        except KafkaError as exc:
            if not kafka.is_too_large(exc):
                raise TransientError(f"could not publish to {topic}: {exc}") from exc
        # Even the key and the event's own headers are too large: coordinates only.
        counted = [(k, v) for k, v in own if k == REDRIVE_COUNT]
        try:
            return await self._send(topic, b"", None, [*counted, *stub], TOO_LARGE_TO_COPY)
        except KafkaError as exc:
            raise TransientError(f"could not publish to {topic}: {exc}") from exc

    async def _send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        error_type: str,
    ) -> WrittenLetter:
        meta = await self.producer.send_and_wait(topic, value=value, key=key, headers=headers)
        return WrittenLetter(topic, meta.partition, meta.offset, error_type)
