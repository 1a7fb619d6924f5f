"""A redrive's wait for its marks to be visible to ``read_committed`` readers, in memory."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from bridge.dlq import marks
from bridge.dlq.marks import MarkReader
from bridge.kafka.topics import REDRIVES_TOPIC
from bridge.settings import Settings


class StableOffsets:
    """A read_committed consumer whose last stable offsets move as scripted."""

    def __init__(self, answers: Sequence[int | Exception]) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return {tp: answer for tp in tps}


def reader(consumer: StableOffsets) -> MarkReader:
    marks_reader = MarkReader(Settings(), "orders.dlq")
    marks_reader.consumer = consumer  # type: ignore[assignment]
    return marks_reader


async def test_the_wait_ends_once_the_last_stable_offset_passes_the_last_mark() -> None:
    # The commit marker comes after the commit returns: 7 (before the marks), 9, then 10.
    consumer = StableOffsets([7, 9, 10, 11])
    assert await reader(consumer).await_visible({0: 10})
    assert consumer.asked == 3


async def test_marks_that_never_become_visible_end_the_wait_with_false(monkeypatch) -> None:
    monkeypatch.setattr(marks, "VISIBLE_TIMEOUT_S", 0.05)
    consumer = StableOffsets([9])
    assert not await reader(consumer).await_visible({0: 10})
    assert consumer.asked >= 2


async def test_kafka_not_answering_ends_the_wait_with_false(caplog) -> None:
    consumer = StableOffsets([KafkaConnectionError("down")])
    assert not await reader(consumer).await_visible({0: 10})
    assert REDRIVES_TOPIC in caplog.text


async def test_no_marks_written_needs_no_wait() -> None:
    consumer = StableOffsets([0])
    assert await reader(consumer).await_visible({})
    assert consumer.asked == 0
