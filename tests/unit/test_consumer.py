"""The live consumer's commits, with the engine acting on in-memory records and a
stand-in for the Kafka consumer: one commit at a time, made again when it fails, never
backwards, never for a generation that has ended; the rebalance budget."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from bridge.concurrency import ActionLimit
from bridge.consumer import NOTHING, BridgeConsumer
from bridge.envelope import RecordLike
from bridge.settings import Settings
from tests.support import until
from tests.support.memory import FakeIngress, MemoryRecord

TP = TopicPartition("orders", 0)


def record(offset: int, key: bytes | None) -> MemoryRecord:
    return MemoryRecord(TP.topic, TP.partition, offset, key, b"")


def bridge_over(ingress: FakeIngress) -> BridgeConsumer:
    settings = Settings(retry_initial_s=0.01, retry_max_s=0.05)
    bridge = BridgeConsumer(settings, ingress, [TP.topic])  # type: ignore[arg-type]
    bridge.engine.assign(TP)
    return bridge


class FakeKafka:
    """Stands in for the Kafka consumer: records commits, fails or holds them on demand."""

    def __init__(self) -> None:
        self.commits: list[int] = []
        self.committed = -1
        self.fail: list[BaseException] = []
        self.hold: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.polls: list[tuple[tuple[TopicPartition, ...], int]] = []

    async def commit(self, offsets: dict[TopicPartition, object]) -> None:
        offset = offsets[TP].offset  # type: ignore[attr-defined]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                hold, self.hold = self.hold, None
                await hold.wait()
            if self.fail:
                raise self.fail.pop(0)
            self.commits.append(offset)
            self.committed = offset
        finally:
            self.in_flight -= 1

    def pause(self, *tps: TopicPartition) -> None:
        pass

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        self.polls.append((tps, timeout_ms))
        return {}

    def resume(self, *tps: TopicPartition) -> None:
        pass


async def acted_on(bridge: BridgeConsumer, offsets: range) -> None:
    for offset in offsets:
        bridge.engine.submit(TP, record(offset, f"k{offset}".encode()))
    await until(lambda: bridge.processed == offsets.stop)


async def test_a_commit_that_failed_is_made_again_for_an_idle_partition() -> None:
    from aiokafka.errors import KafkaError

    async def act(record: RecordLike) -> None:
        pass

    bridge = bridge_over(FakeIngress(act))
    kafka = FakeKafka()
    bridge.consumer = kafka  # type: ignore[assignment]
    await acted_on(bridge, range(3))
    kafka.fail.append(KafkaError("the coordinator went away"))
    await bridge._commit()
    assert kafka.commits == []
    # Nothing new arrives on the partition; the next tick (or the revoke, or the
    # shutdown) still commits what was done.
    await bridge._commit()
    assert kafka.commits == [3]


async def test_one_commit_at_a_time_and_committed_offsets_never_go_back() -> None:
    async def act(record: RecordLike) -> None:
        pass

    bridge = bridge_over(FakeIngress(act))
    kafka = FakeKafka()
    bridge.consumer = kafka  # type: ignore[assignment]
    await acted_on(bridge, range(3))
    kafka.hold = release = asyncio.Event()
    periodic = asyncio.create_task(bridge._commit())  # held by the broker
    await until(lambda: kafka.in_flight == 1)
    await acted_on(bridge, range(3, 6))
    revoke = asyncio.create_task(bridge._commit([TP]))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(asyncio.gather(periodic, revoke), 10)
    assert kafka.most_in_flight == 1
    assert kafka.commits == [3, 6] and kafka.committed == 6


async def test_no_commit_is_sent_for_a_generation_that_has_ended() -> None:
    from aiokafka.errors import CommitFailedError

    async def act(record: RecordLike) -> None:
        pass

    bridge = bridge_over(FakeIngress(act))
    kafka = FakeKafka()
    bridge.consumer = kafka  # type: ignore[assignment]
    await acted_on(bridge, range(3))
    kafka.fail.append(CommitFailedError("UnknownMemberId"))
    await bridge._commit()
    await acted_on(bridge, range(3, 5))
    await bridge._commit([TP])  # the revoke that follows: not sent against the dead member
    assert kafka.commits == []
    # The rejoin assigns partitions anew; from then on commits go out again.
    await bridge.on_revoked({TP})
    bridge.on_assigned({TP})
    await acted_on(bridge, range(5, 7))
    await bridge._commit()
    assert kafka.commits == [7]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"heartbeat_interval_s": 4, "session_timeout_s": 10}, "a third of session_timeout_s"),
        ({"revoke_timeout_s": 30, "rebalance_timeout_s": 60}, "half of rebalance_timeout_s"),
    ],
)
def test_the_rebalance_budget_is_kept_consistent(values: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**values)


def test_a_member_tells_its_limit_which_share_of_the_groups_partitions_it_reads() -> None:
    class Partitioned(FakeKafka):
        def partitions_for_topic(self, topic: str) -> set[int] | None:
            return {0, 1, 2, 3, 4, 5} if topic == TP.topic else None

    settings = Settings()
    limit = ActionLimit()

    async def act(record: RecordLike) -> None:
        pass

    ingress = FakeIngress(act)
    bridge = BridgeConsumer(settings, ingress, [TP.topic], limit=limit)  # type: ignore[arg-type]
    bridge.consumer = Partitioned()  # type: ignore[assignment]
    bridge.on_assigned({TopicPartition(TP.topic, p) for p in (0, 1, 2)})
    assert limit.share == 0.5  # a group of several: no probes
    bridge.on_assigned({TopicPartition(TP.topic, p) for p in (3, 4, 5)})
    assert limit.share == 1.0  # all six: alone


async def test_a_full_buffer_polls_for_nothing_and_takes_again_once_a_record_is_done() -> None:
    """Full, the loop takes no records and pauses nothing, yet polls the client (its
    group's errors surface, it counts as consuming); one record done, even with every
    other record of the buffer stuck, is room again."""
    gates = {offset: asyncio.Event() for offset in range(40)}

    async def act(record: RecordLike) -> None:
        await gates[record.offset].wait()

    settings = Settings(max_buffered=40)
    bridge = BridgeConsumer(settings, FakeIngress(act), [TP.topic])  # type: ignore[arg-type]
    bridge.engine.assign(TP)
    kafka = FakeKafka()
    assert await bridge._room(kafka)  # type: ignore[arg-type]
    for offset in range(39):
        bridge.engine.submit(TP, record(offset, f"k{offset}".encode()))
    assert await bridge._room(kafka)  # type: ignore[arg-type]
    assert kafka.polls == []
    bridge.engine.submit(TP, record(39, b"k39"))
    assert not await bridge._room(kafka)  # type: ignore[arg-type]
    assert kafka.polls == [((NOTHING,), 0)]  # a poll that takes nothing, once no room came
    gates[7].set()
    await until(lambda: bridge.processed == 1)
    assert await bridge._room(kafka)  # type: ignore[arg-type]
    for gate in gates.values():
        gate.set()
    await until(lambda: bridge.processed == 40)
