"""The per-key engine with a stand-in ingress: the done prefix (``PartitionState``) and
every way a key's work ends (done, dead-lettered, abandoned, cancelled). The pipeline
over the real ingress is in ``test_pipeline.py``; commits in ``test_consumer.py``."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from bridge.concurrency import ActionLimit
from bridge.engine import Engine, PartitionState
from bridge.envelope import RecordLike
from bridge.errors import TransientError
from tests.support import until
from tests.support.memory import FakeIngress, MemoryRecord

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


def record(offset: int, key: bytes | None) -> MemoryRecord:
    return MemoryRecord(TP.topic, TP.partition, offset, key, b"")


def new_engine(ingress: FakeIngress, **retry: float) -> Engine:
    values = {"retry_initial_s": 0.01, "retry_max_s": 0.05, **retry}
    engine = Engine(ingress, max_in_flight=64, **values)  # type: ignore[arg-type]
    engine.assign(TP)
    return engine


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
    engine = new_engine(ingress)
    state = engine.partitions[TP]
    for offset in range(4):
        engine.submit(TP, record(offset, b"k"))
    await until(lambda: engine.processed == 4)
    # Records that came while the first was retried wait behind it, then a later one.
    engine.submit(TP, record(4, b"k"))
    await until(lambda: engine.processed == 5)
    assert ingress.letters == [0]
    assert ingress.acted == [1, 2, 3, 4]
    assert state.commit_point() == 5
    assert engine.buffered == 0 and state.keys == {} and engine._running == 0


async def test_a_dead_letter_write_that_fails_unexpectedly_is_retried_too() -> None:
    calls = {"letter": 0}

    async def act(record: RecordLike) -> None:
        raise ValueError("always")

    async def letter(record: RecordLike) -> None:
        calls["letter"] += 1
        if calls["letter"] < 3:
            raise OSError("not a TransientError")

    ingress = FakeIngress(act, letter)
    engine = new_engine(ingress)
    engine.submit(TP, record(0, b"k"))
    await until(lambda: engine.processed == 1)
    assert ingress.letters == [0] and calls["letter"] == 3


async def test_on_revoke_keys_in_backoff_give_up_at_once_and_in_flight_actions_finish() -> None:
    release = asyncio.Event()

    async def act(record: RecordLike) -> None:
        if record.key == b"slow":
            await release.wait()
        elif record.key == b"down":
            raise TransientError("Temporal unavailable")

    ingress = FakeIngress(act)
    engine = new_engine(ingress, retry_initial_s=30, retry_max_s=30)
    state = engine.partitions[TP]
    engine.submit(TP, record(0, b"down"))
    engine.submit(TP, record(1, b"slow"))
    engine.submit(TP, record(2, b"slow"))
    await until(lambda: state.failing == 1)
    drain = asyncio.create_task(engine.drain([TP], timeout=20))
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


async def test_on_revoke_records_waiting_for_a_slot_in_temporal_give_up_at_once() -> None:
    # Ten keys, two slots in Temporal: two calls answer only when released, eight wait.
    release = asyncio.Event()

    async def act(record: RecordLike) -> None:
        await release.wait()

    limit = ActionLimit(2)
    ingress = FakeIngress(act, limit=limit)
    engine = new_engine(ingress)
    state = engine.partitions[TP]
    for offset in range(10):
        engine.submit(TP, record(offset, f"k{offset}".encode()))
    await until(lambda: limit.in_flight == 2 and limit.waiting == 8)
    drain = asyncio.create_task(engine.drain([TP], timeout=20))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(drain, 10)
    # The two calls in Temporal finished; the eight that waited did not go in after them.
    assert sorted(ingress.acted) == [0, 1]
    assert [offset for offset, value in state.pending.items() if value is False] == [*range(2, 10)]
    assert limit.in_flight == 0 and limit.waiting == 0
    assert not state.tasks


async def test_a_drain_ends_in_time_when_a_library_swallows_cancellation() -> None:
    """Like temporalio turning a cancelled update into an error of its own."""

    async def act(record: RecordLike) -> None:
        try:
            await asyncio.Event().wait()  # a call that never answers
        except asyncio.CancelledError:
            raise RuntimeError("update cancelled") from None

    ingress = FakeIngress(act)
    engine = new_engine(ingress)
    state = engine.partitions[TP]
    engine.submit(TP, record(0, b"k"))
    await until(lambda: len(state.tasks) == 1)
    started = time.monotonic()
    await asyncio.wait_for(engine.drain([TP], timeout=1.0), 30)
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
    engine = new_engine(ingress)
    state = engine.partitions[TP]
    engine.submit(TP, record(0, b"k"))
    await until(lambda: len(state.tasks) == 1)
    started = time.monotonic()
    await asyncio.wait_for(engine.drain([TP], timeout=1.0), 30)
    assert time.monotonic() - started < 10
    assert state.pending == {0: False}
    for task in state.tasks:
        task.cancel()  # the second cancellation ends it
    await until(lambda: not state.tasks)


async def test_a_released_partition_makes_room_for_a_waiter_at_once() -> None:
    # Three records that never finish fill a buffer of three; releasing their partition
    # (a revoke) is room, and the waiter sees it without another record being done.
    stuck = asyncio.Event()

    async def act(record: RecordLike) -> None:
        await stuck.wait()

    engine = new_engine(FakeIngress(act))
    state = engine.partitions[TP]
    for offset in range(3):
        engine.submit(TP, record(offset, f"k{offset}".encode()))
    waiter = asyncio.create_task(engine.wait_for_room(3))
    await asyncio.sleep(0.05)
    assert not waiter.done() and engine.buffered == 3
    engine.release(TP)
    await asyncio.wait_for(waiter, 1)
    assert engine.buffered == 0 and engine.processed == 0
    stuck.set()
    await asyncio.wait_for(asyncio.gather(*state.tasks), 1)
    assert engine.buffered == 0  # records done after the release are not counted twice
