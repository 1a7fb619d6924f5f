"""The provenance writer's batching: which partition, when, in what order, how large."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from bridge import provenance
from bridge.dispatch import Outcome, Result
from bridge.provenance import ProvenanceWriter, parse_record
from tests.support.waiting import until


class Producer:
    """Takes sends as a producer would and keeps them (partition, value) in order;
    while ``open`` is clear, sends wait (a Kafka that does not answer); a partition in
    ``failing`` refuses them."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = set(range(partitions))
        self.sent: list[tuple[int, bytes]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.failing: set[int] = set()
        self.refused = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return self.partitions

    async def send(self, topic: str, *, value: bytes, partition: int) -> asyncio.Future[Any]:
        await self.open.wait()
        if partition in self.failing:
            self.refused += 1
            raise KafkaTimeoutError()
        self.sent.append((partition, value))
        delivered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    def parsed(self) -> list[tuple[int, Any]]:
        """(partition, item) of every item sent, in order."""
        return [(p, item) for p, value in self.sent for item in parse_record(value)]

    def items(self) -> list[tuple[int, str]]:
        """(partition, event id or workflow id) of every item sent, in order."""
        return [
            (partition, getattr(item, "event_id", None) or item.workflow_id)
            for partition, item in self.parsed()
        ]


def _record(event_id: str, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    headers = [("ce_id", event_id.encode()), ("ce_type", b"t")]
    return ConsumerRecord("orders", 0, offset, 0, 0, b"k", b"v", None, 1, 1, headers)


RESULT = Result(Outcome.STARTED, "r", "start", "wf", "run", None)


def _writer(producer: Producer, linger_s: float = 60.0) -> ProvenanceWriter:
    return ProvenanceWriter(producer, "ktb.provenance", linger_s=linger_s)  # type: ignore[arg-type]


async def test_items_go_where_a_record_keyed_by_their_event_id_would_in_order():
    producer = Producer()
    writer = _writer(producer)
    ids = [f"event-{i}" for i in range(40)]
    for i, event_id in enumerate(ids):
        writer.event(_record(event_id, i), None, RESULT)
    writer.event(_record("event-3", 99), None, RESULT)
    assert producer.sent == []
    await writer.close()

    partitioner = DefaultPartitioner()
    expected = {i: partitioner(i.encode(), [0, 1, 2], [0, 1, 2]) for i in ids}
    sent = producer.items()
    assert sorted(sent) == sorted([(expected[i], i) for i in [*ids, "event-3"]])
    assert len(producer.sent) == len(set(expected.values())) > 1
    offsets = [item.offset for _, item in producer.parsed() if item.event_id == "event-3"]
    assert offsets == [3, 99]


async def test_the_linger_sends_what_waited_and_a_full_buffer_does_not_wait():
    producer = Producer(partitions=1)
    writer = _writer(producer, linger_s=0.01)
    writer.event(_record("a"), None, RESULT)
    await until(lambda: bool(producer.sent))
    assert producer.items() == [(0, "a")]

    slow = _writer(producer)
    for i in range(provenance.FLUSH_ITEMS):
        slow.event(_record(f"b-{i}", i), None, RESULT)
    await asyncio.sleep(0)  # the flush runs on its own task
    await asyncio.sleep(0)
    assert len(producer.items()) == 1 + provenance.FLUSH_ITEMS
    await slow.close()
    await writer.close()


async def test_published_items_are_keyed_by_their_workflow():
    producer = Producer()
    writer = _writer(producer)
    writer.published(
        ce_id="c-1", type="t", topic="out", partition=0, offset=5, published_kind="outcome",
        workflow_id="wf-9", causation_id=None, tenant_id="acme",
    )  # fmt: skip
    await writer.close()
    partition = DefaultPartitioner()(b"wf-9", [0, 1, 2], [0, 1, 2])
    assert producer.items() == [(partition, "wf-9")]


async def test_a_large_batch_is_split_below_the_record_limit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(provenance, "MAX_RECORD_BYTES", 2_000)
    producer = Producer(partitions=1)
    writer = _writer(producer)
    for i in range(30):
        writer.event(_record(f"e-{i}", i), None, RESULT)
    await writer.close()
    assert len(producer.sent) > 1
    assert all(len(value) <= 2_000 for _, value in producer.sent)
    assert [event_id for _, event_id in producer.items()] == [f"e-{i}" for i in range(30)]
    assert all(json.loads(value)["kind"] == "batch" for _, value in producer.sent)


async def test_a_closed_writer_drops_with_a_warning(caplog: pytest.LogCaptureFixture):
    producer = Producer()
    writer = _writer(producer)
    await writer.close()
    writer.event(_record("late"), None, RESULT)
    await writer.flush()
    assert producer.sent == []
    assert "provenance writer closed" in caplog.text


async def test_items_added_while_a_send_waits_follow_in_a_later_batch_in_order():
    producer = Producer(partitions=1)
    producer.open.clear()
    writer = _writer(producer, linger_s=0.001)
    writer.event(_record("e", 1), None, RESULT)
    await until(lambda: writer._items == [])  # taken by the flush, whose send waits
    writer.event(_record("e", 2), None, RESULT)
    writer.event(_record("e", 3), None, RESULT)
    producer.open.set()
    await writer.close()
    assert len(producer.sent) == 2
    assert [item.offset for _, item in producer.parsed()] == [1, 2, 3]


async def test_close_gives_up_on_a_kafka_that_does_not_answer(caplog: pytest.LogCaptureFixture):
    producer = Producer()
    producer.open.clear()
    writer = ProvenanceWriter(producer, "t", linger_s=60.0, close_timeout_s=0.05)  # type: ignore[arg-type]
    writer.event(_record("e"), None, RESULT)
    await writer.close()
    assert writer._flushing is not None
    await until(writer._flushing.done)
    assert producer.sent == [] and "given up" in caplog.text


async def test_a_stuck_partition_drops_its_round_and_the_buffer_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(provenance, "FLUSH_ITEMS", 4)
    producer = Producer(partitions=2)
    producer.failing = {0}
    writer = _writer(producer)
    ids = [f"e-{i}" for i in range(6)]
    for event_id in ids * 3:
        writer.event(_record(event_id), None, RESULT)
    await writer.flush()
    partitioner = DefaultPartitioner()
    on_one = [i for i in ids if partitioner(i.encode(), [0, 1], [0, 1]) == 1]
    assert 3 * (len(ids) - len(on_one)) > provenance.FLUSH_ITEMS  # several records for 0
    assert producer.refused == 1  # the stuck partition is tried once per round
    assert sorted(i for _, i in producer.items()) == sorted(on_one * 3)

    monkeypatch.setattr(provenance, "MAX_BUFFERED", 5)
    producer.open.clear()
    for n in range(8):
        writer.event(_record("f", n), None, RESULT)
    producer.open.set()
    await writer.close()
    assert "dropping items" in caplog.text and "3 items dropped while full" in caplog.text
