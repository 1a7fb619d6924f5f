"""The per-key engine in memory: the contiguous-prefix commit rule, commits that fail,
and every way a key's work ends (done, dead-lettered, abandoned, cancelled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition

from bridge.consumer import BridgeConsumer, PartitionState
from bridge.dispatch import Outcome, Result
from bridge.envelope import RecordLike
from bridge.errors import PermanentError, TransientError
from bridge.observability.metrics import Metrics
from bridge.settings import Settings

TP = TopicPartition("orders", 0)


def test_commit_stops_at_the_first_unfinished_offset() -> None:
    state = PartitionState()
    for offset in range(5):
        assert state.take(offset)
    state.done(1)
    state.done(2)
    assert state.commit_point() is None
    state.done(0)
    assert state.commit_point() == 3
    assert state.outstanding() == 2
    state.committed_to(3)
    state.done(4)
    assert state.commit_point() is None
    state.done(3)
    assert state.commit_point() == 5
    assert state.pending == {}


def test_a_failed_commit_is_made_again_from_the_same_point() -> None:
    state = PartitionState()
    for offset in range(3):
        state.take(offset)
        state.done(offset)
    assert state.commit_point() == 3
    # The commit failed: nothing confirmed it, so the same progress is offered again,
    # even though the partition has nothing new (an idle partition).
    assert state.commit_point() == 3
    state.committed_to(3)
    assert state.commit_point() is None


def test_the_committed_offset_never_decreases() -> None:
    state = PartitionState()
    state.committed_to(7)
    state.committed_to(4)
    assert state.committed == 7
    for offset in range(5):
        state.take(offset)
        state.done(offset)
    assert state.commit_point() is None  # 5 is behind what is committed


def test_offsets_passed_without_records_count_as_done_once_everything_taken_is() -> None:
    state = PartitionState()
    for offset in (3, 4):
        state.take(offset)
    state.passed(6)  # record 4 is not done yet: the marker at 5 waits
    state.done(3)
    assert state.commit_point() == 4
    state.done(4)
    state.passed(6)  # a transaction's commit marker at 5
    assert state.commit_point() == 6
    state.passed(6)
    state.passed(5)  # never backwards
    assert state.commit_point() == 6
    assert not state.take(5) and state.take(6)


def test_a_record_taken_again_is_ignored() -> None:
    state = PartitionState()
    assert state.take(10) and state.take(11)
    assert not state.take(10)
    assert list(state.pending) == [10, 11]


# --- the engine, driven by in-memory records ---------------------------------------------


@dataclass
class Record:
    offset: int
    key: bytes | None
    topic: str = TP.topic
    partition: int = TP.partition
    timestamp: int = 0
    value: bytes | None = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeIngress:
    """Acts on records through ``act``; dead letters through ``letter``."""

    def __init__(
        self,
        act: Callable[[RecordLike], Awaitable[None]],
        letter: Callable[[RecordLike], Awaitable[None]] | None = None,
    ) -> None:
        self.metrics = Metrics()
        self.act = act
        self.letter = letter
        self.acted: list[int] = []
        self.letters: list[int] = []

    async def handle(self, record: RecordLike) -> Result:
        await self.act(record)
        self.acted.append(record.offset)
        return Result(Outcome.STARTED)

    async def dead_letter(self, record: RecordLike, exc: PermanentError) -> Result:
        if self.letter is not None:
            await self.letter(record)
        self.letters.append(record.offset)
        return Result(Outcome.DEAD_LETTERED)
        return Result(Outcome.DEAD_LETTERED)


def engine(ingress: FakeIngress, **settings: float) -> BridgeConsumer:
    values = {"retry_initial_s": 0.01, "retry_max_s": 0.05, **settings}
    consumer = BridgeConsumer(Settings(**values), ingress, [TP.topic])  # type: ignore[arg-type]
    consumer.engine.assign(TP)
    return consumer


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.005)


async def test_a_failing_dead_letter_write_is_retried_and_the_key_keeps_its_order() -> None:
    failures = {"letter": 3}

    async def act(record: RecordLike) -> None:
        if record.offset == 0:
            raise RuntimeError("a bug in one record's handling")

    async def letter(record: RecordLike) -> None:
        if failures["letter"] > 0:
            failures["letter"] -= 1
            raise TransientError("the DLQ is not writable")

    ingress = FakeIngress(act, letter)
    bridge = engine(ingress)
    state = bridge.partitions[TP]
    for offset in range(4):
        bridge.engine.submit(TP, Record(offset, b"k"))
    await until(lambda: bridge.processed == 4)
    # Records that came while the first was retried wait behind it, then a later one.
    bridge.engine.submit(TP, Record(4, b"k"))
    await until(lambda: bridge.processed == 5)
    assert ingress.letters == [0]
    assert ingress.acted == [1, 2, 3, 4]
    assert state.commit_point() == 5
    assert bridge.buffered == 0 and state.keys == {} and bridge.engine._running == 0


async def test_a_dead_letter_write_that_fails_unexpectedly_is_retried_too() -> None:
    calls = {"letter": 0}

    async def act(record: RecordLike) -> None:
        raise ValueError("always")

    async def letter(record: RecordLike) -> None:
        calls["letter"] += 1
        if calls["letter"] < 3:
            raise OSError("not a TransientError")

    ingress = FakeIngress(act, letter)
    bridge = engine(ingress)
    bridge.engine.submit(TP, Record(0, b"k"))
    await until(lambda: bridge.processed == 1)
    assert ingress.letters == [0] and calls["letter"] == 3


async def test_on_revoke_keys_in_backoff_give_up_at_once_and_in_flight_actions_finish() -> None:
    release = asyncio.Event()

    async def act(record: RecordLike) -> None:
        if record.key == b"slow":
            await release.wait()
        elif record.key == b"down":
            raise TransientError("Temporal unavailable")

    ingress = FakeIngress(act)
    bridge = engine(ingress, retry_initial_s=30, retry_max_s=30)
    state = bridge.partitions[TP]
    bridge.engine.submit(TP, Record(0, b"down"))
    bridge.engine.submit(TP, Record(1, b"slow"))
    bridge.engine.submit(TP, Record(2, b"slow"))
    await until(lambda: state.failing == 1)
    drain = asyncio.create_task(bridge.engine.drain([TP], timeout=20))
    await asyncio.sleep(0.05)
    # The key in backoff is gone already; the slow key's action is still in flight.
    assert len(state.tasks) == 1
    release.set()
    started = time.monotonic()
    await drain
    assert time.monotonic() - started < 10
    # The action in flight finished; the record after it was not started.
    assert ingress.acted == [1]
    assert [offset for offset, value in state.pending.items() if value is False] == [0, 2]
    assert state.commit_point() is None


async def test_a_drain_ends_in_time_when_a_library_swallows_cancellation() -> None:
    """Like temporalio turning a cancelled update into an error of its own."""

    async def act(record: RecordLike) -> None:
        try:
            await asyncio.Event().wait()  # a call that never answers
        except asyncio.CancelledError:
            raise RuntimeError("update cancelled") from None

    ingress = FakeIngress(act)
    bridge = engine(ingress)
    state = bridge.partitions[TP]
    bridge.engine.submit(TP, Record(0, b"k"))
    await until(lambda: len(state.tasks) == 1)
    started = time.monotonic()
    await asyncio.wait_for(bridge.engine.drain([TP], timeout=1.0), 30)
    assert time.monotonic() - started < 10
    await until(lambda: not state.tasks)
    assert state.pending == {0: False} and ingress.letters == []


async def test_a_drain_is_bounded_even_when_a_task_ignores_cancellation() -> None:
    async def act(record: RecordLike) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # the cancellation ignored: waiting on

    ingress = FakeIngress(act)
    bridge = engine(ingress)
    state = bridge.partitions[TP]
    bridge.engine.submit(TP, Record(0, b"k"))
    await until(lambda: len(state.tasks) == 1)
    started = time.monotonic()
    await asyncio.wait_for(bridge.engine.drain([TP], timeout=1.0), 30)
    assert time.monotonic() - started < 10
    assert state.pending == {0: False}
    for task in state.tasks:
        task.cancel()  # the second cancellation ends it
    await until(lambda: not state.tasks)


class FakeKafka:
    """Stands in for the Kafka consumer: records commits, fails or holds them on demand."""

    def __init__(self) -> None:
        self.commits: list[int] = []
        self.committed = -1
        self.fail: list[BaseException] = []
        self.hold: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

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

    def resume(self, *tps: TopicPartition) -> None:
        pass


async def acted_on(bridge: BridgeConsumer, offsets: range) -> None:
    for offset in offsets:
        bridge.engine.submit(TP, Record(offset, f"k{offset}".encode()))
    await until(lambda: bridge.processed == offsets.stop)


async def test_a_commit_that_failed_is_made_again_for_an_idle_partition() -> None:
    from aiokafka.errors import KafkaError

    async def act(record: RecordLike) -> None:
        pass

    bridge = engine(FakeIngress(act))
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

    bridge = engine(FakeIngress(act))
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

    bridge = engine(FakeIngress(act))
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
