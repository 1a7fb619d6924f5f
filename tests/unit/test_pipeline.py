"""The pipeline in memory: records encoded as producers encode them, through the real
``Ingress`` (schemas, router, dead-lettering) on the per-key engine, live
(``BridgeConsumer.run``, committing) and in a replay (``ReplayRunner.run``, counting),
with Kafka in memory and a dispatcher that records actions instead of calling Temporal.

Every test that holds for both runs for both: live and replay share one engine.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from bridge.codec import SchemaCatalog
from bridge.dispatch import DryRun
from bridge.engine import MAX_UNEXPECTED_ATTEMPTS
from bridge.envelope import Event
from bridge.errors import ActionRejectedError, TransientError
from bridge.ingress import Ingress
from bridge.replay import ReplayMode, ReplayRequest
from bridge.replay.runner import IN_FLIGHT_PER_ACTION, fresh_ids
from bridge.routes import Action, Router
from bridge.settings import Settings
from tests.support import order_data, payment, routes_config, until
from tests.support.memory import (
    MemoryKafka,
    MemoryRecord,
    RecordingDispatcher,
    consuming,
    memory_ingress,
    memory_settings,
    replay_runner,
    replaying,
)

TOPIC = "orders"
PARTITIONS = 3
PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
CANCELLED = "com.example.order.cancelled"
ROUTES = routes_config(
    [
        {
            "name": "start-order",
            "topic": TOPIC,
            "type": PLACED,
            "when": "data.total_cents > 0",
            "action": "start",
            "workflow": "OrderFulfillment",
            "task_queue": "orders",
            "workflow_id": "order-{data.order_id}",
            "args": "data",
        },
        {
            "name": "payment-confirmed",
            "topic": TOPIC,
            "type": CONFIRMED,
            "action": "signal",
            "workflow_id": "order-{data.order_id}",
            "signal": "payment_confirmed",
        },
    ],
    unmatched="dead_letter",
)
MODES = ["live", "replay"]


@pytest.fixture
def kafka(memory_kafka: MemoryKafka) -> MemoryKafka:
    memory_kafka.create(TOPIC, PARTITIONS)
    return memory_kafka


def settings(**values: object) -> Settings:
    return memory_settings(max_in_flight=8, replay_concurrency=1, **values)


def place(kafka: MemoryKafka, catalog: SchemaCatalog, key: str, **where: int) -> MemoryRecord:
    return kafka.produce_event(catalog, TOPIC, PLACED, order_data(key), key=key, **where)


def pay(
    kafka: MemoryKafka, catalog: SchemaCatalog, key: str, seq: int, **where: int
) -> MemoryRecord:
    data = payment(key, f"pay-{seq}", amount=seq)
    return kafka.produce_event(catalog, TOPIC, CONFIRMED, data, key=key, **where)


async def run(mode: str, kafka: MemoryKafka, s: Settings, ingress: Ingress) -> dict[int, int]:
    """Live: consume until every partition is committed to its end, then stop. Replay:
    replay the whole topic. Either way return the done prefix per partition."""
    if mode == "live":
        ends = kafka.end_offsets(TOPIC)
        async with consuming(kafka, s, ingress):
            await until(lambda: kafka.group_committed(s.group_id, TOPIC) == ends)
        return kafka.group_committed(s.group_id, TOPIC)
    runner = await replaying(kafka, s, ingress, TOPIC)
    return {
        r.partition: p
        for r, p in zip(runner.plan.ranges, runner.checkpoint().positions, strict=True)
    }


def retries(ingress: Ingress) -> float:
    registry = ingress.metrics.registry
    return registry.get_sample_value("ktb_transient_retries_total", {"topic": TOPIC}) or 0.0


def letter_headers(letter: MemoryRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in letter.headers if k.startswith("ktb_")}


# --- order and concurrency ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_each_key_is_acted_on_in_offset_order_while_keys_run_in_parallel(
    mode: str, kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    keys = [f"o-{n}" for n in range(24)]
    produced: dict[str, list[int]] = {key: [] for key in keys}
    for seq in range(8):
        for key in keys:
            record = place(kafka, catalog, key) if seq == 0 else pay(kafka, catalog, key, seq)
            produced[key].append(record.offset)
    rng = random.Random(7)

    async def temporal(action: Action, event: Event, attempt: int) -> None:
        await asyncio.sleep(rng.random() * 0.002)  # actions end in an order of their own

    dispatcher = RecordingDispatcher(temporal)
    s = settings()
    done = await run(mode, kafka, s, memory_ingress(catalog, ROUTES, dispatcher, kafka))

    assert dispatcher.offsets_by_key() == produced
    bound = s.max_in_flight if mode == "live" else s.replay_concurrency * IN_FLIGHT_PER_ACTION
    assert 1 < dispatcher.most_running <= bound
    assert done == kafka.end_offsets(TOPIC)
    assert kafka.letters(TOPIC) == []


# --- the done prefix ----------------------------------------------------------------------


class Gates:
    """Holds each action until its offset is released."""

    def __init__(self, offsets: range) -> None:
        self.gates = {offset: asyncio.Event() for offset in offsets}

    async def __call__(self, action: Action, event: Event, attempt: int) -> None:
        await self.gates[event.offset or 0].wait()

    def release(self, offset: int) -> None:
        self.gates[offset].set()


def acted(dispatcher: RecordingDispatcher) -> set[int]:
    return {call.event.offset or 0 for call in dispatcher.acted}


async def test_live_commits_never_pass_an_earlier_offset_not_done(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    for n in range(5):
        place(kafka, catalog, f"o-{n}", partition=0)
    gates = Gates(range(5))
    dispatcher = RecordingDispatcher(gates)
    s = settings()
    async with consuming(kafka, s, memory_ingress(catalog, ROUTES, dispatcher, kafka)) as bridge:
        await until(lambda: dispatcher.running == 5)  # every key in flight at once
        # Later offsets finish first; each step is followed by a commit.
        for offset in (4, 2, 0, 1, 3):
            gates.release(offset)
            await until(lambda offset=offset: offset in acted(dispatcher))
            await bridge._commit()
            if offset in (4, 2):
                assert 0 not in kafka.group_committed(s.group_id, TOPIC)
        tp = TopicPartition(TOPIC, 0)
        commits = [c[tp] for c in kafka.consumers[0].commits if tp in c]
    # 0 done: commit 1; 1 done (2 was already): commit 3; 3 done (4 was): commit 5.
    assert commits == [1, 3, 5]


async def test_a_replay_reports_no_position_past_an_earlier_offset_not_done(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    for n in range(5):
        place(kafka, catalog, f"o-{n}", partition=0)
    gates = Gates(range(5))
    dispatcher = RecordingDispatcher(gates)
    checkpoints = []
    runner = replay_runner(
        kafka,
        settings(),
        memory_ingress(catalog, ROUTES, dispatcher, kafka),
        TOPIC,
        on_progress=checkpoints.append,
    )
    replay = asyncio.create_task(runner.run())
    await until(lambda: dispatcher.running == 5)
    for offset in (4, 2, 1):
        gates.release(offset)
    await until(lambda: acted(dispatcher) == {1, 2, 4})
    assert runner.checkpoint().positions[0] == 0 and runner.report.read == 0
    gates.release(0)
    # The position moves as records are done, during the replay, not only at its end.
    await until(lambda: runner.checkpoint().positions[0] == 3)
    assert runner.report.read == 3 and runner.report.started == 3
    gates.release(3)
    report = await asyncio.wait_for(replay, 10)
    assert report.read == 5 and report.started == 5
    # Every checkpoint counts exactly the records below its position.
    seen = {(c.positions[0], c.report.read) for c in checkpoints}
    assert {position for position, _ in seen} <= {0, 3, 5}
    assert all(read == position for position, read in seen)


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_transient_error_is_retried_with_backoff_and_never_dead_lettered(
    mode: str, kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    slow = place(kafka, catalog, "o-slow", partition=0)
    later = pay(kafka, catalog, "o-slow", 1, partition=0)
    others = [place(kafka, catalog, f"o-{n}", partition=0) for n in range(3)]
    for n in range(3):
        place(kafka, catalog, f"o-{n}", partition=1)
    slow_id = slow.header("ce_id")

    async def temporal(action: Action, event: Event, attempt: int) -> None:
        if event.id == slow_id and attempt <= 3:
            raise TransientError("Temporal unavailable")

    dispatcher = RecordingDispatcher(temporal)
    s = settings(retry_initial_s=0.02, retry_max_s=0.2)
    ingress = memory_ingress(catalog, ROUTES, dispatcher, kafka)
    done = await run(mode, kafka, s, ingress)

    attempts = [call.at for call in dispatcher.calls if call.event.id == slow_id]
    assert len(attempts) == 4
    # Jittered exponential backoff: each wait at least half of 0.02, 0.04, 0.08 s.
    for gap, delay in zip(
        [b - a for a, b in itertools.pairwise(attempts)], [0.02, 0.04, 0.08], strict=True
    ):
        assert gap >= delay / 2
    assert retries(ingress) == 3
    assert kafka.letters(TOPIC) == []
    order = [call.event.offset for call in dispatcher.acted]
    # Other keys went on while the key retried; the key's later record waited for it.
    assert all(order.index(o.offset) < order.index(slow.offset) for o in others)
    assert order.index(slow.offset) < order.index(later.offset)
    assert done == kafka.end_offsets(TOPIC)
    if mode == "live":
        # The partition was paused while its key retried, then resumed.
        tp = TopicPartition(TOPIC, 0)
        pauses = [what for what, where in kafka.consumers[0].pauses if where == tp]
        assert pauses == ["pause", "resume"]


@pytest.mark.parametrize("mode", MODES)
async def test_permanent_failures_are_dead_lettered_and_the_key_goes_on(
    mode: str, kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    valid = place(kafka, catalog, "o-poison", partition=0)
    # Undecodable: the event's headers over a body cut short.
    poison = kafka.append(TOPIC, 0, valid.key, (valid.value or b"")[:12], valid.headers)
    after_poison = pay(kafka, catalog, "o-poison", 1, partition=0)
    rejected = place(kafka, catalog, "o-rejected", partition=0)
    after_rejected = pay(kafka, catalog, "o-rejected", 1, partition=0)
    unmatched = kafka.produce_event(
        catalog, TOPIC, CANCELLED, {"order_id": "o-x", "reason": "r"}, key="o-x", partition=0
    )
    rejected_id = rejected.header("ce_id")

    async def temporal(action: Action, event: Event, attempt: int) -> None:
        if event.id == rejected_id:
            raise ActionRejectedError("Temporal rejected start (INVALID_ARGUMENT)")

    dispatcher = RecordingDispatcher(temporal)
    ingress = memory_ingress(catalog, ROUTES, dispatcher, kafka)
    done = await run(mode, kafka, settings(), ingress)

    letters = {int(letter_headers(x)["ktb_original_offset"]): x for x in kafka.letters(TOPIC)}
    assert sorted(letters) == [poison.offset, rejected.offset, unmatched.offset]
    types = {offset: letter_headers(x)["ktb_error_type"] for offset, x in letters.items()}
    assert types == {
        poison.offset: "decode_error",
        rejected.offset: "action_rejected",
        unmatched.offset: "unmatched",
    }
    for offset, original in ((poison.offset, poison), (rejected.offset, rejected)):
        letter = letters[offset]
        assert (letter.key, letter.value) == (original.key, original.value)
        assert letter_headers(letter)["ktb_original_topic"] == TOPIC
        assert letter_headers(letter)["ktb_original_partition"] == "0"
        assert set(original.headers) <= set(letter.headers)
    assert dispatcher.attempts[rejected_id] == 1  # a permanent error is not retried
    order = [call.event.offset for call in dispatcher.acted]
    assert order.index(valid.offset) < order.index(after_poison.offset)
    assert after_rejected.offset in order
    assert retries(ingress) == 0
    assert done == kafka.end_offsets(TOPIC)


@pytest.mark.parametrize("mode", MODES)
async def test_a_persistent_unexpected_error_is_dead_lettered_as_internal_error(
    mode: str, kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    buggy = place(kafka, catalog, "o-bug", partition=0)
    after = pay(kafka, catalog, "o-bug", 1, partition=0)
    flaky = place(kafka, catalog, "o-flaky", partition=1)
    buggy_id, flaky_id = buggy.header("ce_id"), flaky.header("ce_id")

    async def temporal(action: Action, event: Event, attempt: int) -> None:
        if event.id == buggy_id:
            raise RuntimeError("a bug below the dispatcher")
        if event.id == flaky_id and attempt < MAX_UNEXPECTED_ATTEMPTS:
            raise RuntimeError("a bug that clears up")

    dispatcher = RecordingDispatcher(temporal)
    done = await run(mode, kafka, settings(), memory_ingress(catalog, ROUTES, dispatcher, kafka))

    assert dispatcher.attempts[buggy_id] == MAX_UNEXPECTED_ATTEMPTS
    assert dispatcher.attempts[flaky_id] == MAX_UNEXPECTED_ATTEMPTS
    [letter] = kafka.letters(TOPIC)
    headers = letter_headers(letter)
    assert headers["ktb_error_type"] == "internal_error"
    assert headers["ktb_original_offset"] == str(buggy.offset)
    assert "RuntimeError('a bug below the dispatcher')" in headers["ktb_error_message"]
    assert letter.value == buggy.value
    acted_ids = [call.event.id for call in dispatcher.acted]
    assert buggy_id not in acted_ids and flaky_id in acted_ids
    assert after.header("ce_id") in acted_ids
    assert done == kafka.end_offsets(TOPIC)


async def test_a_dead_letter_that_cannot_be_written_is_retried_in_place(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    valid = place(kafka, catalog, "o-1", partition=0)
    poison = kafka.append(TOPIC, 0, valid.key, b"\x00", valid.headers)
    after = pay(kafka, catalog, "o-1", 1, partition=0)
    kafka.produce_failures = [KafkaTimeoutError(), KafkaTimeoutError()]
    dispatcher = RecordingDispatcher()
    s = settings()
    done = await run("live", kafka, s, memory_ingress(catalog, ROUTES, dispatcher, kafka))

    [letter] = kafka.letters(TOPIC)  # written once, after the failed writes
    assert letter_headers(letter)["ktb_original_offset"] == str(poison.offset)
    assert [call.event.offset for call in dispatcher.acted] == [valid.offset, after.offset]
    tp = TopicPartition(TOPIC, 0)
    assert [what for what, where in kafka.consumers[0].pauses if where == tp] == [
        "pause",
        "resume",
    ]
    assert done == kafka.end_offsets(TOPIC)


@pytest.mark.parametrize("mode", MODES)
async def test_an_internal_error_letter_that_cannot_be_written_is_retried_not_the_action(
    mode: str, kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    buggy = place(kafka, catalog, "o-bug", partition=0)
    after = pay(kafka, catalog, "o-bug", 1, partition=0)
    buggy_id = buggy.header("ce_id")

    async def temporal(action: Action, event: Event, attempt: int) -> None:
        if event.id == buggy_id:
            raise RuntimeError("a bug below the dispatcher")

    kafka.produce_failures = [KafkaTimeoutError(), KafkaTimeoutError()]
    dispatcher = RecordingDispatcher(temporal)
    done = await run(mode, kafka, settings(), memory_ingress(catalog, ROUTES, dispatcher, kafka))

    # Once the letter is decided, a failed write retries the letter, not the action.
    assert dispatcher.attempts[buggy_id] == MAX_UNEXPECTED_ATTEMPTS
    [letter] = kafka.letters(TOPIC)
    assert letter_headers(letter)["ktb_error_type"] == "internal_error"
    assert [call.event.offset for call in dispatcher.acted] == [after.offset]
    assert done == kafka.end_offsets(TOPIC)


# --- dry runs ----------------------------------------------------------------------------


async def test_a_dry_run_replay_acts_on_nothing_and_writes_no_letter(
    kafka: MemoryKafka, catalog: SchemaCatalog
) -> None:
    for key in ("o-1", "o-2"):
        place(kafka, catalog, key)
        pay(kafka, catalog, key, 1)
    valid = place(kafka, catalog, "o-3")
    kafka.append(TOPIC, valid.partition, valid.key, b"\x00", valid.headers)
    request = ReplayRequest(TOPIC, "earliest", dry_run=True)
    ingress = Ingress(catalog, Router(ROUTES), fresh_ids(DryRun(), request), None)
    runner = await replaying(kafka, settings(), ingress, TOPIC, request)
    assert runner.report.read == 6
    assert runner.report.would_act == 5 and runner.report.dead_lettered == 1
    examples = runner.report.examples
    assert examples.keys() == {"start-order", "payment-confirmed"}
    assert set(examples.values()) <= {"order-o-1", "order-o-2", "order-o-3"}
    assert kafka.letters(TOPIC) == []


@pytest.mark.parametrize("dry_run", [False, True])
async def test_a_fresh_replay_acts_on_ids_of_its_own(
    kafka: MemoryKafka, catalog: SchemaCatalog, dry_run: bool
) -> None:
    """The suffix is the replay's (``FreshIds``): routes build the live ids, the replay's
    executor renames every action, acting or dry."""
    for key in ("o-1", "o-2"):
        place(kafka, catalog, key, partition=0)
        pay(kafka, catalog, key, 1, partition=0)
    request = ReplayRequest(
        TOPIC, "earliest", mode=ReplayMode.FRESH, dry_run=dry_run, generation="g1"
    )
    recorder = RecordingDispatcher()
    executor = fresh_ids(DryRun() if dry_run else recorder, request)
    ingress = memory_ingress(catalog, ROUTES, executor, kafka)
    runner = await replaying(kafka, settings(), ingress, TOPIC, request)
    assert runner.report.matched == 4
    assert runner.report.examples == {
        "start-order": "order-o-1-replay-g1",
        "payment-confirmed": "order-o-1-replay-g1",
    }
    acted = sorted(call.action.workflow_id for call in recorder.acted)
    expected = [] if dry_run else ["order-o-1-replay-g1"] * 2 + ["order-o-2-replay-g1"] * 2
    assert acted == expected
