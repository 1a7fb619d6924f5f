"""Dead letters: the original record plus why it failed, on ``<topic>.dlq``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.errors import BridgeError, TransientError

ERROR_TYPE = "ktb_error_type"
ERROR_MESSAGE = "ktb_error_message"
ORIGINAL_TOPIC = "ktb_original_topic"
ORIGINAL_PARTITION = "ktb_original_partition"
ORIGINAL_OFFSET = "ktb_original_offset"
FAILED_AT = "ktb_failed_at"
REDRIVE_COUNT = "ktb_redrive_count"
ERROR_HEADERS = frozenset(
    {ERROR_TYPE, ERROR_MESSAGE, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, FAILED_AT}
)
SUFFIX = ".dlq"
MAX_MESSAGE = 2000


class RecordLike(Protocol):
    """The parts of a Kafka consumer record the bridge reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + SUFFIX


@dataclass(frozen=True)
class DeadLetter:
    """Where a dead letter went."""

    topic: str
    partition: int
    offset: int
    error_type: str


class DeadLetterPublisher:
    """Publishes failed records unchanged plus ``ktb_*`` error headers; waits for the ack."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(self, record: RecordLike, error: BridgeError) -> DeadLetter:
        """Send ``record`` to its DLQ; raise ``TransientError`` if Kafka does not take it."""
        # REDRIVE_COUNT is not an error header: a redriven record that fails again
        # comes back with its count, which is what lets redrive stop at a maximum.
        headers = [(k, v) for k, v in record.headers if k not in ERROR_HEADERS]
        headers += [
            (ERROR_TYPE, error.error_type.encode()),
            (ERROR_MESSAGE, error.message[:MAX_MESSAGE].encode("utf-8", "replace")),
            (ORIGINAL_TOPIC, record.topic.encode()),
            (ORIGINAL_PARTITION, str(record.partition).encode()),
            (ORIGINAL_OFFSET, str(record.offset).encode()),
            (FAILED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        topic = dlq_topic(record.topic)
        try:
            meta = await self.producer.send_and_wait(
                topic, value=record.value, key=record.key, headers=headers
            )
        except KafkaError as exc:
            raise TransientError(f"could not publish to {topic}: {exc}") from exc
        return DeadLetter(topic, meta.partition, meta.offset, error.error_type)
