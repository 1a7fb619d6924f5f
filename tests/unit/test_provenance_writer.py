"""The provenance writer's batching: which partition, when, in what order, how large."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from bridge import provenance
from bridge.dispatch import Outcome, Result
from bridge.provenance import ProvenanceWriter, parse_record


class Producer:
    """Takes sends as a producer would and keeps them (partition, value) in order."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = set(range(partitions))
        self.sent: list[tuple[int, bytes]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return self.partitions

    async def send(self, topic: str, *, value: bytes, partition: int) -> asyncio.Future[Any]:
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
    for _ in range(100):
        if producer.sent:
            break
        await asyncio.sleep(0.01)
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
