"""A redrive's wait for its marks to be visible to ``read_committed`` readers, in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from bridge.dlq import marks
from bridge.dlq.marks import MarkReader
from bridge.errors import KafkaAuthError
from bridge.kafka.topics import REDRIVES_TOPIC
from bridge.settings import Settings


class StableOffsets:
    """A read_committed consumer whose last stable offsets move as scripted
    (``None``: the broker does not answer)."""

    def __init__(self, answers: Sequence[int | Exception | None]) -> None:
        self.answers = list(answers)
        self.asked: list[list[TopicPartition]] = []

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        answer = self.answers[min(len(self.asked), len(self.answers) - 1)]
        self.asked.append(tps)
        if answer is None:
            await asyncio.Event().wait()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, int)
        return {tp: answer + tp.partition for tp in tps}


def reader(consumer: StableOffsets | None) -> MarkReader:
    marks_reader = MarkReader(Settings(), "orders.dlq")
    marks_reader.consumer = consumer  # type: ignore[assignment]
    return marks_reader


async def test_the_wait_ends_once_every_partition_is_past_its_last_mark() -> None:
    # The commit marker comes after the commit returns: partition 0 reads 7, 9, then 10;
    # partition 1 one more each time.
    consumer = StableOffsets([7, 9, 10, 20])
    assert await reader(consumer).await_visible({0: 10, 1: 11}) is None
    assert len(consumer.asked) == 3
    assert set(consumer.asked[0]) == {
        TopicPartition(REDRIVES_TOPIC, 0),
        TopicPartition(REDRIVES_TOPIC, 1),
    }


async def test_marks_that_never_become_visible_end_the_wait(monkeypatch) -> None:
    monkeypatch.setattr(marks, "VISIBLE_TIMEOUT_S", 0.1)
    consumer = StableOffsets([9])
    assert await reader(consumer).await_visible({0: 10}) == "not within 0.1 s"
    assert len(consumer.asked) >= 2


async def test_a_broker_that_does_not_answer_ends_the_wait_at_its_deadline(monkeypatch) -> None:
    monkeypatch.setattr(marks, "VISIBLE_TIMEOUT_S", 0.1)
    assert await reader(StableOffsets([None])).await_visible({0: 10}) == "not within 0.1 s"


async def test_kafka_failing_ends_the_wait_with_the_reason() -> None:
    consumer = StableOffsets([KafkaConnectionError("down")])
    problem = await reader(consumer).await_visible({0: 10})
    assert problem is not None and REDRIVES_TOPIC in problem and "down" in problem


async def test_a_reader_that_cannot_start_ends_the_wait_with_the_reason(monkeypatch) -> None:
    async def refused(self: MarkReader, isolation_level: str) -> None:
        raise KafkaAuthError("credentials refused", bootstrap="localhost:9092")

    monkeypatch.setattr(MarkReader, "_started", refused)
    problem = await reader(None).await_visible({0: 10})
    assert problem is not None and "credentials refused" in problem


async def test_no_marks_written_needs_no_wait() -> None:
    consumer = StableOffsets([0])
    assert await reader(consumer).await_visible({}) is None
    assert consumer.asked == []
