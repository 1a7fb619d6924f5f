"""The pipeline in memory, like faststream's ``TestKafkaBroker``: no Kafka, no Temporal.

- ``MemoryKafka`` holds topics as lists of records. Its consumer and producer stand in
  for aiokafka's where the bridge uses them: ``install`` puts its consumer behind
  ``bridge.kafka.consumer``/``bridge.kafka.start``, so ``BridgeConsumer.run`` and
  ``ReplayRunner.run`` read from it, commit to it and pause its partitions; its
  producer takes a ``DeadLetterPublisher``'s letters.
- ``RecordingDispatcher`` is a ``Dispatcher`` that records each attempt at an action
  and plays Temporal's part through a ``behaviour`` that may wait or raise.
- ``FakeIngress`` stands in for the ``Ingress`` when the engine is tested alone.
- ``memory_ingress`` is the real ``Ingress`` (schemas, router, dead-lettering) over
  both; ``consuming`` runs the live bridge over it, ``replaying`` (``replay_runner``)
  a replay.

The real-service tests stay the proof; these make the delivery rules cheap to pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import OffsetAndMetadata
from temporalio.client import Client

from bridge.codec import SchemaCatalog
from bridge.concurrency import ActionLimit
from bridge.consumer import BridgeConsumer
from bridge.dispatch import Dispatcher, Executor, Outcome, Result
from bridge.dlq.publisher import DeadLetterPublisher, dlq_topic
from bridge.envelope import Event, RecordLike, encode_event
from bridge.errors import PermanentError
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.policies import FailurePolicies
from bridge.replay import (
    PartitionRange,
    ProgressCallback,
    ReplayPlan,
    ReplayRequest,
    ReplayRunner,
)
from bridge.routes import Action, ActionKind, Router, RoutesConfig
from bridge.settings import Settings


@dataclass
class MemoryRecord:
    """A record held by ``MemoryKafka``; what the bridge reads of a consumer record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0

    def header(self, name: str) -> str | None:
        """The first header named ``name``, decoded; ``None`` if there is none."""
        return next((v.decode() for k, v in self.headers if k == name), None)


@dataclass(frozen=True)
class Sent:
    """Where a produced record went (what aiokafka's ``RecordMetadata`` tells)."""

    topic: str
    partition: int
    offset: int


class MemoryKafka:
    """Topics in memory, with the committed offsets of each consumer group."""

    def __init__(self) -> None:
        self.topics: dict[str, list[list[MemoryRecord]]] = {}
        self.committed: dict[str | None, dict[TopicPartition, int]] = {}
        self.produce_failures: list[BaseException] = []
        """Raised, in order, by the next sends (a DLQ that cannot be written)."""
        self.consumers: list[MemoryConsumer] = []

    # --- topics ----------------------------------------------------------------------

    def create(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` partitions (nothing if it exists)."""
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> MemoryRecord:
        """Append a record to a partition; it gets the next offset and the time now."""
        log = self.topics[topic][partition]
        record = MemoryRecord(
            topic, partition, len(log), key, value, list(headers), int(time.time() * 1000)
        )
        log.append(record)
        return record

    def produce_event(
        self,
        catalog: SchemaCatalog,
        topic: str,
        type: str,
        data: Mapping[str, Any],
        *,
        key: str,
        id: str | None = None,
        partition: int | None = None,
        tenant: str | None = None,
    ) -> MemoryRecord:
        """Encode an event as a producer would (``encode_event``) and append it to the
        partition of its key (or ``partition``)."""
        encoded = encode_event(
            catalog,
            type=type,
            data=data,
            id=id or str(uuid.uuid4()),
            source="tests",
            key=key,
            tenant_id=tenant,
        )
        if partition is None:
            partition = zlib.crc32(key.encode()) % len(self.topics[topic])
        return self.append(topic, partition, encoded.key, encoded.value, encoded.headers)

    def records(self, topic: str) -> list[MemoryRecord]:
        """Every record of ``topic``, partition by partition, in offset order."""
        return [record for log in self.topics.get(topic, []) for record in log]

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The end offset of each partition of ``topic``."""
        return {partition: len(log) for partition, log in enumerate(self.topics[topic])}

    def letters(self, topic: str) -> list[MemoryRecord]:
        """The dead letters written for records of ``topic``."""
        return self.records(dlq_topic(topic))

    def group_committed(self, group: str, topic: str) -> dict[int, int]:
        """The offsets ``group`` committed for ``topic``, per partition."""
        return {
            tp.partition: offset
            for tp, offset in self.committed.get(group, {}).items()
            if tp.topic == topic
        }

    # --- clients -----------------------------------------------------------------------

    def consumer(self, settings: Settings, *topics: str, **options: Any) -> MemoryConsumer:
        """What ``bridge.kafka.consumer`` returns while installed."""
        consumer = MemoryConsumer(self, options.get("group_id"))
        if topics:
            consumer.subscribe(list(topics))
        self.consumers.append(consumer)
        return consumer

    @staticmethod
    async def start(client: object, settings: Settings | None = None) -> None:
        """What ``bridge.kafka.start`` does while installed: nothing to connect to."""

    def producer(self) -> MemoryProducer:
        """A producer appending to these topics."""
        return MemoryProducer(self)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> MemoryKafka:
        """Make ``bridge.kafka.consumer`` and ``bridge.kafka.start`` use these topics for
        the rest of the test (the live consumer and the replay runner call them there)."""
        import bridge.kafka
        import bridge.policies

        monkeypatch.setattr(bridge.kafka, "consumer", self.consumer)
        monkeypatch.setattr(bridge.kafka, "start", self.start)
        monkeypatch.setattr(bridge.policies, "ensure_topics", self.ensure_topics)
        return self

    async def ensure_topics(self, settings: Settings, topics: Mapping[str, int]) -> list[str]:
        """Create the missing ``topics`` (what ``bridge.kafka.ensure_topics`` does)."""
        missing = [t for t in topics if t not in self.topics]
        for topic in missing:
            self.create(topic, topics[topic])
        return missing

    def check_installed(self) -> None:
        """Fail unless ``install`` put these topics behind ``bridge.kafka``."""
        import bridge.kafka

        assert bridge.kafka.consumer == self.consumer, "MemoryKafka.install() first"


class MemoryProducer:
    """Appends to ``MemoryKafka`` topics; a topic it has not seen gets one partition."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Sent:
        """Append one record, or raise the next of ``produce_failures``."""
        await asyncio.sleep(0)
        if self.kafka.produce_failures:
            raise self.kafka.produce_failures.pop(0)
        self.kafka.create(topic)
        record = self.kafka.append(topic, partition or 0, key, value, headers or ())
        return Sent(topic, record.partition, record.offset)


class MemoryConsumer:
    """Reads ``MemoryKafka`` the way the bridge uses aiokafka's consumer: subscribed in
    a group (every partition assigned on the first fetch, from the group's committed
    offsets) or assigned by hand; pauses, resumes and commits are recorded."""

    def __init__(self, kafka: MemoryKafka, group_id: str | None) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.pauses: list[tuple[str, TopicPartition]] = []
        """``("pause" | "resume", tp)`` for each change of a partition's state."""
        self.commits: list[dict[TopicPartition, int]] = []
        self.stopped = False
        self._subscribed: list[str] = []
        self._listener: Any = None

    def subscribe(self, topics: Iterable[str], listener: Any = None) -> None:
        """Join the group for ``topics``; partitions are assigned on the first fetch."""
        self._subscribed = list(topics)
        self._listener = listener

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read ``partitions`` without a group, from offset 0 until a seek."""
        self.positions = {tp: 0 for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on."""
        self.positions[tp] = offset

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[MemoryRecord]]:
        """Records from the position of each assigned partition not paused, at most
        ``max_records`` in all; waits a moment when there are none."""
        if self._subscribed and not self.positions:
            await self._join()
        budget = max_records or 1 << 30
        batch: dict[TopicPartition, list[MemoryRecord]] = {}
        for tp in sorted(partitions or self.positions):
            if tp in self.paused or budget <= 0:
                continue
            position = self.positions[tp]
            records = self.kafka.topics[tp.topic][tp.partition][position : position + budget]
            if records:
                batch[tp] = records
                self.positions[tp] = position + len(records)
                budget -= len(records)
        # Yield to the tasks acting on records, as a fetch over the network would.
        await asyncio.sleep(0 if batch else min(timeout_ms / 1000, 0.005))
        return batch

    async def _join(self) -> None:
        committed = self.kafka.committed.get(self.group_id, {})
        assigned = {
            TopicPartition(topic, partition)
            for topic in self._subscribed
            for partition in range(len(self.kafka.topics.get(topic, [])))
        }
        self.positions = {tp: committed.get(tp, 0) for tp in assigned}
        if self._listener is not None:
            await self._listener.on_partitions_assigned(assigned)

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record the consumer fetches from ``tp``."""
        if tp not in self.positions:
            raise IllegalStateError(f"{tp} is not assigned")
        return self.positions[tp]

    def pause(self, *partitions: TopicPartition) -> None:
        """Fetch nothing from ``partitions`` until resumed."""
        for tp in partitions:
            if tp not in self.paused:
                self.paused.add(tp)
                self.pauses.append(("pause", tp))

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch from ``partitions`` again."""
        for tp in partitions:
            if tp in self.paused:
                self.paused.discard(tp)
                self.pauses.append(("resume", tp))

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        """Commit for the group; the group's offset is the last one committed."""
        await asyncio.sleep(0)
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        self.commits.append(committed)
        self.kafka.committed.setdefault(self.group_id, {}).update(committed)

    def highwater(self, tp: TopicPartition) -> int:
        """The end offset of ``tp``."""
        return len(self.kafka.topics[tp.topic][tp.partition])

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The end offset of each of ``partitions``."""
        await asyncio.sleep(0)
        return {tp: self.highwater(tp) for tp in partitions}

    async def stop(self) -> None:
        """Leave: nothing is fetched after this."""
        self.stopped = True


# --- Temporal's part ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One attempt at an action."""

    action: Action
    event: Event
    attempt: int
    """1 for the first attempt at this event's action, 2 for its first retry, ..."""
    at: float
    """``time.monotonic()`` when it was made."""


Behaviour = Callable[[Action, Event, int], Awaitable[None]]
"""Plays Temporal for one attempt (action, event, attempt): returns, waits or raises."""

OUTCOMES = {
    ActionKind.START: Outcome.STARTED,
    ActionKind.SIGNAL: Outcome.SIGNALLED,
    ActionKind.SIGNAL_WITH_START: Outcome.STARTED,
    ActionKind.UPDATE_WITH_START: Outcome.UPDATED,
    ActionKind.CANCEL: Outcome.CANCELLED,
    ActionKind.TERMINATE: Outcome.TERMINATED,
}


class RecordingDispatcher(Dispatcher):
    """A ``Dispatcher`` that records actions instead of calling Temporal.

    ``calls`` holds every attempt, ``acted`` the ones that succeeded, in the order they
    ended; ``most_running`` is the most actions ever in flight at once.
    """

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        super().__init__(cast(Client, None))
        self.behaviour = behaviour
        self.calls: list[Call] = []
        self.acted: list[Call] = []
        self.attempts: Counter[str] = Counter()
        self.running = 0
        self.most_running = 0

    async def execute(
        self, action: Action, event: Event, closed: asyncio.Event | None = None
    ) -> Result:
        """Record the attempt, let ``behaviour`` play Temporal, report the outcome (no
        limit of calls at once: ``closed`` has no slot wait to end)."""
        self.attempts[event.id] += 1
        call = Call(action, event, self.attempts[event.id], time.monotonic())
        self.calls.append(call)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.behaviour is not None:
                await self.behaviour(action, event, call.attempt)
            else:
                await asyncio.sleep(0)
        finally:
            self.running -= 1
        self.acted.append(call)
        return Result(
            OUTCOMES[action.kind],
            action.route,
            action.kind.value,
            action.workflow_id,
            run_id=f"run-of-{action.workflow_id}",
        )

    def offsets_by_key(self) -> dict[str | None, list[int]]:
        """The offsets acted on, per Kafka key, in the order their actions succeeded."""
        out: dict[str | None, list[int]] = {}
        for call in self.acted:
            out.setdefault(call.event.key, []).append(call.event.offset or 0)
        return out


class FakeIngress:
    """Stands in for ``Ingress`` under the engine alone: acts on a record through ``act``
    and dead-letters through ``letter`` (each may wait or raise); ``acted`` and
    ``letters`` list the offsets done each way. With ``limit``, ``act`` runs in one of
    its slots, as a dispatcher's call to Temporal does."""

    def __init__(
        self,
        act: Callable[[RecordLike], Awaitable[None]],
        letter: Callable[[RecordLike], Awaitable[None]] | None = None,
        limit: ActionLimit | None = None,
    ) -> None:
        self.metrics = Metrics()
        self.act = act
        self.letter = letter
        self.limit = limit
        self.acted: list[int] = []
        self.letters: list[int] = []

    async def handle(self, record: RecordLike, closed: asyncio.Event | None = None) -> Result:
        """Act on ``record`` through ``act`` (in a slot of ``limit``, if given)."""
        if self.limit is None:
            await self.act(record)
        else:
            async with self.limit.slot(closed):
                await self.act(record)
        self.acted.append(record.offset)
        return Result(Outcome.STARTED)

    async def dead_letter(self, record: RecordLike, exc: PermanentError) -> Result:
        """Dead-letter ``record`` through ``letter``."""
        if self.letter is not None:
            await self.letter(record)
        self.letters.append(record.offset)
        return Result(Outcome.DEAD_LETTERED)


# --- the pipeline ---------------------------------------------------------------------


def memory_ingress(
    catalog: SchemaCatalog,
    config: RoutesConfig,
    dispatcher: Executor | None,
    kafka: MemoryKafka,
    metrics: Metrics | None = None,
) -> Ingress:
    """The real ``Ingress``: the schemas, a router over ``config``, ``dispatcher``, and a
    ``DeadLetterPublisher`` writing to ``kafka``."""
    return Ingress(
        catalog,
        Router(config),
        dispatcher,
        DeadLetterPublisher(kafka.producer()),  # type: ignore[arg-type]
        metrics or Metrics(),
    )


def memory_settings(**values: Any) -> Settings:
    """Settings for the pipeline in memory: quick commits and retries; a bootstrap
    address nothing listens on, so a client not built through ``MemoryKafka`` fails."""
    defaults: dict[str, Any] = {
        "kafka_bootstrap": "127.0.0.1:9",
        "connect_timeout_s": 1,
        "group_id": f"memory-{uuid.uuid4().hex[:8]}",
        "commit_interval_s": 0.02,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "shutdown_timeout_s": 5,
    }
    return Settings(**{**defaults, **values})


@contextlib.asynccontextmanager
async def consuming(
    kafka: MemoryKafka,
    settings: Settings,
    ingress: Ingress,
    policies: FailurePolicies | None = None,
) -> AsyncIterator[BridgeConsumer]:
    """The live bridge (``BridgeConsumer.run``) over ``kafka``'s topics its router reads,
    with ``policies`` if given; stopped (drained, committed) on leaving. ``kafka`` must
    be installed."""
    kafka.check_installed()
    bridge = BridgeConsumer(settings, ingress, ingress.router.topics, policies=policies)
    task = asyncio.create_task(bridge.run())
    try:
        yield bridge
    finally:
        bridge.stop()
        await asyncio.wait_for(task, settings.shutdown_timeout_s + 5)


def replay_runner(
    kafka: MemoryKafka,
    settings: Settings,
    ingress: Ingress,
    topic: str,
    on_progress: ProgressCallback | None = None,
    request: ReplayRequest | None = None,
) -> ReplayRunner:
    """A replay of every record ``topic`` holds now, not started; ``kafka`` must be
    installed. ``request`` sets the mode and dry run (default: an idempotent replay)."""
    kafka.check_installed()
    plan = ReplayPlan(
        request or ReplayRequest(topic=topic, start="earliest"),
        [PartitionRange(p, 0, end) for p, end in kafka.end_offsets(topic).items()],
    )
    return ReplayRunner(settings, ingress, plan, on_progress=on_progress, progress_every_s=0.01)


async def replaying(
    kafka: MemoryKafka,
    settings: Settings,
    ingress: Ingress,
    topic: str,
    request: ReplayRequest | None = None,
) -> ReplayRunner:
    """Replay every record of ``topic`` (``ReplayRunner.run``) over ``kafka``; return the
    runner once it has finished. ``kafka`` must be installed."""
    runner = replay_runner(kafka, settings, ingress, topic, request=request)
    await runner.run()
    return runner
