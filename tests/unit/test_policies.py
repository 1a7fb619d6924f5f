"""Failure policies in memory: the live bridge over the real ``Ingress`` with ``park_key``
and ``pause`` routes, Kafka in memory (``ktb.parking`` and ``<topic>.parked`` included)
and a dispatcher that records actions. The real-service proof is
``tests/integration/test_policies.py``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiokafka import TopicPartition

from bridge.codec import SchemaCatalog
from bridge.consumer import BridgeConsumer
from bridge.dlq.publisher import REDRIVE_OF
from bridge.envelope import Event
from bridge.errors import ActionRejectedError
from bridge.ingress import Ingress
from bridge.policies import (
    BLOCKED_BY,
    Block,
    Decision,
    FailurePolicies,
    ParkingState,
    Pause,
    block_id,
    held,
    pause_id,
)
from bridge.routes import Action, FailurePolicy, Router
from bridge.settings import Settings
from tests.support import order_data, payment, routes_config, until
from tests.support.memory import (
    MemoryKafka,
    MemoryRecord,
    RecordingDispatcher,
    consuming,
    memory_ingress,
    memory_settings,
    replaying,
)

TOPIC = "orders"
PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"


def routes(on_failure: str, confirmed_on_failure: str | None = None) -> object:
    return routes_config(
        [
            {
                "name": "start-order", "topic": TOPIC, "type": PLACED, "action": "start",
                "workflow": "OrderFulfillment", "task_queue": "orders",
                "workflow_id": "order-{data.order_id}", "on_failure": on_failure,
            },
            {
                "name": "payment-confirmed", "topic": TOPIC, "type": CONFIRMED,
                "action": "signal", "workflow_id": "order-{data.order_id}",
                "signal": "payment_confirmed",
                "on_failure": confirmed_on_failure or on_failure,
            },
        ]
    )  # fmt: skip


@pytest.fixture
def kafka(memory_kafka: MemoryKafka) -> MemoryKafka:
    memory_kafka.create(TOPIC, 2)
    memory_kafka.create(TOPIC + ".parked", 2)
    return memory_kafka


def pay(kafka: MemoryKafka, catalog: SchemaCatalog, key: str, seq: int) -> MemoryRecord:
    return kafka.produce_event(
        catalog, TOPIC, CONFIRMED, payment(key, f"pay-{seq}", seq), key=key, partition=0
    )


def place(kafka: MemoryKafka, catalog: SchemaCatalog, key: str, partition: int = 0) -> MemoryRecord:
    return kafka.produce_event(
        catalog, TOPIC, PLACED, order_data(key), key=key, partition=partition
    )


def rejecting(*offsets: int) -> RecordingDispatcher:
    """A dispatcher whose Temporal rejects the actions of the records at ``offsets``
    (partition 0) for good, while ``failing`` holds them."""
    failing = set(offsets)

    async def temporal(action: Action, event: Event, attempt: int) -> None:
        if event.partition == 0 and event.offset in failing:
            raise ActionRejectedError("rejected", event_id=event.id)

    dispatcher = RecordingDispatcher(temporal)
    dispatcher.failing = failing  # type: ignore[attr-defined]
    return dispatcher


@contextlib.asynccontextmanager
async def bridge(
    kafka: MemoryKafka,
    catalog: SchemaCatalog,
    config: object,
    dispatcher: RecordingDispatcher,
    s: Settings | None = None,
) -> AsyncIterator[tuple[BridgeConsumer, ParkingState, Ingress]]:
    s = s or memory_settings(max_in_flight=8)
    ingress = memory_ingress(catalog, config, dispatcher, kafka)  # type: ignore[arg-type]
    async with parking(s, kafka) as state:
        policies = FailurePolicies(s, ingress, state, kafka.producer(), ingress.metrics)  # type: ignore[arg-type]
        async with consuming(kafka, s, ingress, policies) as consumer:
            yield consumer, state, ingress


@contextlib.asynccontextmanager
async def parking(s: Settings, kafka: MemoryKafka) -> AsyncIterator[ParkingState]:
    state = ParkingState(s, kafka.producer())  # type: ignore[arg-type]
    await state.open()
    try:
        yield state
    finally:
        await state.close()


def committed(kafka: MemoryKafka, consumer: BridgeConsumer) -> int:
    return kafka.group_committed(consumer.settings.group_id, TOPIC).get(0, 0)


def parked(kafka: MemoryKafka) -> list[MemoryRecord]:
    return kafka.records(TOPIC + ".parked")


def released(state: ParkingState, name: str) -> bool:
    """Whether the key's entry says it was released (kept, so that its failed record
    read again is not blocked a second time)."""
    entry = state.entries.get(name)
    return isinstance(entry, Block) and entry.released


def gauge(ingress: Ingress, name: str) -> float:
    return ingress.metrics.registry.get_sample_value(name, {"topic": TOPIC}) or 0.0


def test_a_record_whose_route_is_unknown_takes_its_topics_strictest_policy() -> None:
    router = Router(routes("dead_letter", "park_key"))  # type: ignore[arg-type]
    assert router.failure_policy(TOPIC, "start-order") is FailurePolicy.DEAD_LETTER
    assert router.failure_policy(TOPIC, "payment-confirmed") is FailurePolicy.PARK_KEY
    assert router.failure_policy(TOPIC, None) is FailurePolicy.PARK_KEY
    assert router.failure_policy("elsewhere", None) is FailurePolicy.DEAD_LETTER
    assert Router(routes("pause", "park_key")).failure_policy(TOPIC, None) is FailurePolicy.PAUSE  # type: ignore[arg-type]


def test_a_block_holds_its_keys_records_after_it_once_each_in_offset_order() -> None:
    from bridge.policies import ParkedRecord

    def rec(key: bytes, offset: int, parked_offset: int) -> ParkedRecord:
        return ParkedRecord(TOPIC, 0, offset, key, b"", [], 0, "orders.dlq:0:0", parked_offset)

    block = Block(TOPIC, 0, b"k", "orders.dlq:0:3", after=4, scan_from=0)
    records = [rec(b"k", 3, 0), rec(b"k", 6, 1), rec(b"j", 7, 2), rec(b"k", 5, 3), rec(b"k", 6, 4)]
    assert [r.offset for r in held(records, block)] == [5, 6]
    assert Block.decode(__import__("json").loads(block.encode())) == block


async def test_a_failed_key_parks_its_later_records_until_a_discard_releases_them_in_order(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    first = place(kafka, catalog, "k")
    later = [pay(kafka, catalog, "k", n).offset for n in range(3)]
    others = [place(kafka, catalog, f"o-{n}").offset for n in range(3)]
    dispatcher = rejecting(first.offset)
    async with bridge(kafka, catalog, routes("park_key"), dispatcher) as (consumer, state, ingress):
        end = kafka.end_offsets(TOPIC)[0]
        await until(lambda: committed(kafka, consumer) == end)
        assert dispatcher.offsets_by_key().get("k") is None
        assert sorted(o for k, v in dispatcher.offsets_by_key().items() for o in v) == others
        letters = kafka.letters(TOPIC)
        assert len(letters) == 1
        letter = f"{TOPIC}.dlq:0:{letters[0].offset}"
        assert [r.header(BLOCKED_BY) for r in parked(kafka)] == [letter] * 3
        assert [r.header("ktb_original_offset") for r in parked(kafka)] == [str(o) for o in later]
        block = state.entries[block_id(TOPIC, 0, b"k")]
        assert isinstance(block, Block) and block.letter == letter and block.parked == 3
        assert gauge(ingress, "ktb_parked_records") == 3
        assert gauge(ingress, "ktb_parked_total") == 3

        # A later record of the key parks too, after those already parked.
        also = pay(kafka, catalog, "k", 9).offset
        await until(lambda: len(parked(kafka)) == 4)

        await state.put(block_id(TOPIC, 0, b"k"), replace(block, parked=4, discarded=True))
        await until(lambda: dispatcher.offsets_by_key().get("k") == [*later, also])
        await until(lambda: released(state, block_id(TOPIC, 0, b"k")))
        assert gauge(ingress, "ktb_released_total") == 4
        # The key flows live again.
        again = pay(kafka, catalog, "k", 10).offset
        await until(lambda: dispatcher.offsets_by_key()["k"][-1:] == [again])
        assert len(parked(kafka)) == 4


async def test_redriving_the_blocking_letter_acts_on_it_first_then_on_the_parked_records(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    first = place(kafka, catalog, "k")
    later = [pay(kafka, catalog, "k", n).offset for n in range(3)]
    dispatcher = rejecting(first.offset)
    async with bridge(kafka, catalog, routes("park_key"), dispatcher) as (consumer, state, _):
        await until(lambda: len(parked(kafka)) == 3)
        letter = kafka.letters(TOPIC)[0]
        dispatcher.failing.clear()  # type: ignore[attr-defined]  # the route is fixed
        headers = [(k, v) for k, v in letter.headers if not k.startswith("ktb_")]
        headers.append((REDRIVE_OF, f"{TOPIC}.dlq:0:{letter.offset}".encode()))
        redriven = kafka.append(TOPIC, 0, letter.key, letter.value, headers)
        await until(lambda: dispatcher.offsets_by_key().get("k") == [redriven.offset, *later])
        await until(lambda: committed(kafka, consumer) == redriven.offset + 1)
        assert released(state, block_id(TOPIC, 0, b"k"))


async def test_a_parked_record_failing_on_release_blocks_the_key_again(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    first = place(kafka, catalog, "k")
    later = [pay(kafka, catalog, "k", n).offset for n in range(3)]
    dispatcher = rejecting(first.offset, later[1])
    async with bridge(kafka, catalog, routes("park_key"), dispatcher) as (_, state, _ingress):
        await until(lambda: len(parked(kafka)) == 3)
        block = state.entries[block_id(TOPIC, 0, b"k")]
        assert isinstance(block, Block)
        await state.put(block.id, replace(block, discarded=True))
        await until(lambda: len(kafka.letters(TOPIC)) == 2)
        await until(lambda: getattr(state.entries.get(block.id), "after", None) == later[1])
        again = state.entries[block.id]
        assert isinstance(again, Block) and not again.discarded
        assert again.letter == f"{TOPIC}.dlq:0:{kafka.letters(TOPIC)[1].offset}"
        assert dispatcher.offsets_by_key()["k"] == [later[0]]

        # Discarding the new letter releases what is still parked: the last record.
        await state.put(block.id, replace(again, discarded=True))
        await until(lambda: dispatcher.offsets_by_key()["k"] == [later[0], later[2]])


async def test_blocks_and_discards_are_read_back_from_the_parking_state_by_the_next_bridge(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    first = place(kafka, catalog, "k")
    later = [pay(kafka, catalog, "k", n).offset for n in range(2)]
    dispatcher = rejecting(first.offset)
    s = memory_settings(max_in_flight=8)
    async with bridge(kafka, catalog, routes("park_key"), dispatcher, s) as (consumer, state, _):
        await until(lambda: committed(kafka, consumer) == later[-1] + 1)
        block = state.entries[block_id(TOPIC, 0, b"k")]
    # Stopped: a later record of the key comes, and the letter is discarded meanwhile.
    also = pay(kafka, catalog, "k", 5).offset
    async with parking(memory_settings(), kafka) as offline:
        assert isinstance(block, Block)
        await offline.put(block.id, replace(block, discarded=True))
    dispatcher = rejecting()
    async with bridge(kafka, catalog, routes("park_key"), dispatcher, s) as (consumer, state, _):
        await until(lambda: committed(kafka, consumer) == also + 1)
        assert dispatcher.offsets_by_key().get("k") == [*later, also]
        await until(lambda: released(state, block_id(TOPIC, 0, b"k")))


async def test_a_paused_partition_stops_at_the_record_until_resumed_or_skipped(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    first = place(kafka, catalog, "k")
    after = place(kafka, catalog, "j").offset
    elsewhere = place(kafka, catalog, "x", partition=1).offset
    dispatcher = rejecting(first.offset)
    async with bridge(kafka, catalog, routes("pause"), dispatcher) as (consumer, state, ingress):
        name = pause_id(TOPIC, 0)
        await until(lambda: isinstance(state.entries.get(name), Pause))
        await until(lambda: dispatcher.offsets_by_key().get("x") == [elsewhere])
        assert gauge(ingress, "ktb_partitions_paused") == 1
        assert "j" not in dispatcher.offsets_by_key()
        assert kafka.letters(TOPIC) == []
        attempts = len(dispatcher.calls)
        pause = state.entries[name]
        assert isinstance(pause, Pause) and pause.offset == first.offset

        # Resumed: tried again, fails again, pauses again.
        await state.put(name, replace(pause, decision=Decision.RETRY))
        await until(lambda: len(dispatcher.calls) == attempts + 1)
        await until(lambda: getattr(state.entries.get(name), "decision", "gone") is None)
        assert "j" not in dispatcher.offsets_by_key()

        # Skipped: dead-lettered, and the partition goes on.
        again = state.entries[name]
        assert isinstance(again, Pause)
        await state.put(name, replace(again, decision=Decision.SKIP))
        await until(lambda: dispatcher.offsets_by_key().get("j") == [after])
        assert len(kafka.letters(TOPIC)) == 1
        await until(lambda: committed(kafka, consumer) == after + 1)
        assert name not in state.entries
        assert gauge(ingress, "ktb_partitions_paused") == 0
        assert TopicPartition(TOPIC, 0) in consumer.partitions


async def test_a_replay_honours_the_blocks_and_counts_the_records_they_hold_as_parked(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    first = place(kafka, catalog, "k")
    later = [pay(kafka, catalog, "k", n).offset for n in range(2)]
    fails = place(kafka, catalog, "m")
    after_fail = pay(kafka, catalog, "m", 1).offset
    other = place(kafka, catalog, "o").offset
    s = memory_settings(max_in_flight=8, replay_concurrency=1)
    async with parking(s, kafka) as state:
        block = Block(TOPIC, 0, b"k", f"{TOPIC}.dlq:0:0", after=first.offset, scan_from=0)
        await state.put(block.id, block)
    dispatcher = rejecting(fails.offset)
    ingress = memory_ingress(catalog, routes("park_key"), dispatcher, kafka)  # type: ignore[arg-type]
    runner = await replaying(kafka, s, ingress, TOPIC)

    # k's record before its block is acted on, those after it are not; m's own failure
    # blocks m's later record within the replay; the block on the live bridge stays.
    assert dispatcher.offsets_by_key() == {"k": [first.offset], "o": [other]}
    assert runner.report.parked == len(later) + 1
    assert runner.report.dead_lettered == 1
    assert after_fail > fails.offset
    assert parked(kafka) == []
    async with parking(s, kafka) as state:
        assert state.entries[block.id] == block
        assert [e for e in state.entries.values() if isinstance(e, Block)] == [block]
