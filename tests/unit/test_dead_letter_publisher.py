"""The dead-letter publisher in memory: a letter is always writable, other errors are transient."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from bridge import dlq
from bridge.errors import DecodeError, TransientError


@dataclass
class Record:
    """A consumed record."""

    topic: str = "orders"
    partition: int = 2
    offset: int = 41
    timestamp: int = 0
    key: bytes | None = b"order-1"
    value: bytes | None = b"x" * 100
    headers: list[tuple[str, bytes]] = field(
        default_factory=lambda: [
            ("ce_id", b"evt-1"),
            ("CE_TYPE", b"com.example.order.placed"),
            ("ce_tenantid", b"acme"),
            ("traceparent", b"00-abc-def-01"),
            (dlq.REDRIVE_COUNT, b"2"),
        ]
    )


@dataclass
class Meta:
    """What Kafka acknowledges."""

    partition: int
    offset: int


class Producer:
    """Takes records up to ``limit`` bytes of key, value and headers, like a size-capped topic."""

    def __init__(self, limit: int, error: Exception | None = None) -> None:
        self.limit = limit
        self.error = error
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **record: Any) -> Meta:
        if self.error is not None:
            raise self.error
        size = len(record["key"] or b"") + len(record["value"] or b"")
        size += sum(len(k) + len(v) for k, v in record["headers"])
        if size > self.limit:
            raise MessageSizeTooLargeError(f"{size} bytes")
        self.sent.append({"topic": topic, **record})
        return Meta(0, len(self.sent) - 1)


def publish(
    producer: Producer, record: Record, error: Exception | None = None
) -> dlq.WrittenLetter:
    publisher = dlq.DeadLetterPublisher(producer)  # type: ignore[arg-type]
    return asyncio.run(publisher.publish(record, error or DecodeError("bad data " + "é" * 3000)))


def test_a_record_that_fits_is_copied_with_a_bounded_error_text() -> None:
    producer = Producer(limit=1_000_000)
    letter = publish(producer, Record())
    assert letter.error_type == "decode_error"
    (sent,) = producer.sent
    headers = dict(sent["headers"])
    assert sent["value"] == b"x" * 100 and sent["key"] == b"order-1"
    assert len(headers[dlq.ERROR_MESSAGE]) <= dlq.MAX_MESSAGE_BYTES
    headers[dlq.ERROR_MESSAGE].decode("utf-8")  # cut at a character boundary
    assert headers["traceparent"] == b"00-abc-def-01"


def test_a_record_too_large_to_copy_becomes_a_letter_of_its_coordinates() -> None:
    producer = Producer(limit=20_000)
    letter = publish(producer, Record(value=b"x" * 50_000))
    assert letter.error_type == dlq.TOO_LARGE_TO_COPY
    (sent,) = producer.sent
    headers = dict(sent["headers"])
    assert sent["value"] == b"" and sent["key"] == b"order-1"
    assert headers[dlq.ERROR_TYPE] == dlq.TOO_LARGE_TO_COPY.encode()
    assert headers[dlq.ORIGINAL_ERROR_TYPE] == b"decode_error"
    assert headers[dlq.ORIGINAL_ERROR_MESSAGE].startswith(b"bad data")
    assert (headers[dlq.ORIGINAL_TOPIC], headers[dlq.ORIGINAL_PARTITION]) == (b"orders", b"2")
    assert headers[dlq.ORIGINAL_OFFSET] == b"41"
    assert int(headers[dlq.ORIGINAL_SIZE]) > 50_000
    # What listings and tenant filtering read, and the count redrive stops at.
    assert headers["ce_id"] == b"evt-1" and headers["CE_TYPE"] == b"com.example.order.placed"
    assert headers["ce_tenantid"] == b"acme" and headers[dlq.REDRIVE_COUNT] == b"2"
    assert "traceparent" not in headers
    assert set(headers) >= dlq.ERROR_HEADERS


def test_when_even_the_key_does_not_fit_the_letter_keeps_the_coordinates() -> None:
    producer = Producer(limit=20_000)
    letter = publish(producer, Record(key=b"k" * 30_000, value=b"x" * 50_000))
    assert letter.error_type == dlq.TOO_LARGE_TO_COPY
    (sent,) = producer.sent
    headers = dict(sent["headers"])
    assert sent["key"] is None and sent["value"] == b""
    assert headers[dlq.ORIGINAL_OFFSET] == b"41" and headers[dlq.REDRIVE_COUNT] == b"2"


def test_other_kafka_errors_stay_transient() -> None:
    producer = Producer(limit=1_000_000, error=KafkaConnectionError("broker down"))
    with pytest.raises(TransientError):
        publish(producer, Record())
    assert producer.sent == []
