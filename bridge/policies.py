"""Failure policies (``on_failure``): park a failing key's later records, or pause a partition.

- ``park_key``: a record of key K dead-lettered on partition P *blocks* K on P. Every
  later record of K on P whose route says ``park_key`` is written to
  ``<topic>.parked`` (partition P: the same key order) with its key, value and
  headers, ``ktb_blocked_by`` (the blocking letter) and its original coordinates,
  and counts as done once that write is acknowledged. Other keys flow.
- Releasing: redriving the blocking letter puts its record back on P (redrive
  writes to the original partition); when the engine meets it, it acts on it and,
  if that succeeds, acts on K's parked records in offset order, then lifts the
  block. Discarding the letter (``ktb dlq discard``) marks the block discarded;
  the bridge holding P then releases the parked records the same way. Both run in
  K's own task of the per-key engine, so K's live records wait behind the release
  and keep their order; a parked record that fails blocks K again, and the records
  after it stay parked.
- ``pause``: the partition stops at the failing record (nothing retried) until
  ``ktb bridge resume`` tries it again, or with ``--skip`` dead-letters it.

Which keys are blocked and which partitions are paused lives on ``ktb.parking``, a
compacted topic (one entry per blocked key or paused partition; a pause ends with a
tombstone, a released key keeps its entry marked released, so that its failed record
read again before its offset was committed is not dead-lettered and blocked twice).
Every bridge reads it from the beginning when it starts and follows it: a
partition is processed only once the state has been read to its end, so a restart,
a rebalance or another instance finds the same blocks; a discard or a resume
written there reaches whichever bridge holds the partition. Each step is
idempotent: a release interrupted by a crash runs again from the start (acting
again on a parked record is a duplicate, a no-op), a record parked twice is acted
on once per release.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bridge import kafka
from bridge.backoff import Backoff
from bridge.dispatch import Outcome, Result
from bridge.dlq.letters import letter_header
from bridge.dlq.publisher import (
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    REDRIVE_OF,
    letter_name,
)
from bridge.dlq.publisher import (
    dlq_topic as dlq_topic_of,
)
from bridge.dlq.records import batches, fetching_consumer, reader
from bridge.envelope import TENANT, RecordLike, ce_attribute
from bridge.errors import InvalidRequestError, PauseRequested, PermanentError, TransientError
from bridge.ingress import DeadLettered, Ingress
from bridge.kafka import stop_consumer
from bridge.kafka.topics import (
    PARKED_SUFFIX,
    PARKING_TOPIC,
    ProvisionReport,
    ensure_topics,
    provision_topics,
    topic_partitions,
)
from bridge.observability.metrics import Metrics
from bridge.routes import FailurePolicy, Router
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.engine import PartitionState

log = logging.getLogger("ktb.policies")

BLOCKED_BY = "ktb_blocked_by"
"""On a parked record: ``<dlq topic>:<partition>:<offset>`` of the letter that blocks its key."""
PARKED_AT = "ktb_parked_at"
PARKED_HEADERS = frozenset({BLOCKED_BY, PARKED_AT, ORIGINAL_TOPIC, ORIGINAL_PARTITION,
                            ORIGINAL_OFFSET})  # fmt: skip
"""The headers parking adds to a record's own (removed again when it is released)."""


def parked_topic(topic: str) -> str:
    """Where the parked records of ``topic`` go (partition for partition)."""
    return topic + PARKED_SUFFIX


def _key_text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def block_id(topic: str, partition: int, key: bytes) -> str:
    """The ``ktb.parking`` key of a blocked key."""
    return f"block/{topic}/{partition}/{_key_text(key)}"


def pause_id(topic: str, partition: int) -> str:
    """The ``ktb.parking`` key of a paused partition."""
    return f"pause/{topic}/{partition}"


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    raw = letter_header(headers, name)
    return raw.decode("utf-8", "replace") if raw is not None else None


@dataclass(frozen=True)
class Block:
    """Key ``key`` of ``topic[partition]`` is blocked by the dead letter ``letter``."""

    topic: str
    partition: int
    key: bytes
    letter: str
    """``<dlq topic>:<partition>:<offset>`` of the blocking letter."""
    after: int
    """Offset of the record that failed: the key's records after it are parked."""
    scan_from: int
    """Where a release starts reading ``<topic>.parked[partition]``."""
    parked: int = 0
    """Records parked behind the letter."""
    last_parked: int = -1
    """Original offset of the latest record parked (one read again is not parked twice)."""
    discarded: bool = False
    released: bool = False
    """The key was released. The entry stays so that its failed record, read again
    before its offset was committed, is not dead-lettered and blocked a second time."""
    """The letter was discarded: the bridge holding the partition releases the key."""
    tenant: str | None = None
    """The blocking record's tenant (``ce_tenantid``)."""

    @property
    def id(self) -> str:
        """Its key on ``ktb.parking``."""
        return block_id(self.topic, self.partition, self.key)

    def encode(self) -> bytes:
        """The entry's value on ``ktb.parking``."""
        data = asdict(self)
        data["key"] = _key_text(self.key)
        data["kind"] = "block"
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> Block:
        """A block from its decoded entry."""
        fields = {k: v for k, v in data.items() if k != "kind"}
        fields["key"] = base64.urlsafe_b64decode(fields["key"])
        return cls(**fields)


class Decision(StrEnum):
    """What an operator decided for a paused partition."""

    RETRY = "retry"
    SKIP = "skip"


@dataclass(frozen=True)
class Pause:
    """``topic[partition]`` stopped at ``offset``; ``decision`` once an operator acted."""

    topic: str
    partition: int
    offset: int
    reason: str
    error_type: str
    paused_at: str
    event_id: str | None = None
    tenant: str | None = None
    decision: Decision | None = None

    @property
    def id(self) -> str:
        """Its key on ``ktb.parking``."""
        return pause_id(self.topic, self.partition)

    def encode(self) -> bytes:
        """The entry's value on ``ktb.parking``."""
        return json.dumps({**asdict(self), "kind": "pause"}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> Pause:
        """A pause from its decoded entry."""
        fields = {k: v for k, v in data.items() if k != "kind"}
        if fields.get("decision") is not None:
            fields["decision"] = Decision(fields["decision"])
        return cls(**fields)


Entry = Block | Pause


def _entry(value: bytes) -> Entry | None:
    try:
        data = json.loads(value)
        if data.get("kind") == "block":
            return Block.decode(data)
        if data.get("kind") == "pause":
            return Pause.decode(data)
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("ignoring an entry of %s that is not ktb's", PARKING_TOPIC)
    return None


# --- the state on ktb.parking ------------------------------------------------------------

Listener = Callable[[str, Entry | None], None]


class ParkingState:
    """``ktb.parking`` read into memory and followed; writes wait for the broker's ack.

    ``open`` reads the topic from its beginning; ``follow`` keeps reading it and tells
    ``listener`` of each entry as it arrives (its own writes included).
    """

    def __init__(self, settings: Settings, producer: AIOKafkaProducer | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.entries: dict[str, Entry] = {}
        self.listener: Listener | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tp = TopicPartition(PARKING_TOPIC, 0)
        self._position = 0
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, create: bool = True) -> None:
        """Create the topic if it is missing (``create``; else an absent topic reads as
        empty) and read it to its end."""
        if create:
            await ensure_topics(self.settings, {PARKING_TOPIC: 1})
        else:
            try:
                await topic_partitions(self.settings, PARKING_TOPIC)
            except InvalidRequestError:
                return  # nothing was ever blocked or paused
        consumer = fetching_consumer(self.settings)
        try:
            await kafka.start(consumer, self.settings)
            consumer.assign([self._tp])
            consumer.seek(self._tp, 0)
        except KafkaError as exc:
            await stop_consumer(consumer)
            raise TransientError(f"cannot read {PARKING_TOPIC}: {exc}") from exc
        self._consumer = consumer
        await self.read_to_end()

    async def close(self) -> None:
        """Stop following and reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await stop_consumer(self._consumer)
            self._consumer = None

    def follow(self, listener: Listener) -> None:
        """Keep reading in the background, telling ``listener`` of each entry."""
        self.listener = listener
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await self._fetch(timeout_ms=500)
            except (KafkaError, TransientError) as exc:
                log.warning("reading %s failed (%r); trying again", PARKING_TOPIC, exc)
                await asyncio.sleep(1.0)

    async def _fetch(self, timeout_ms: int) -> None:
        consumer = self._consumer
        assert consumer is not None, "open() first"
        batch = await consumer.getmany(self._tp, timeout_ms=timeout_ms, max_records=500)
        for record in batch.get(self._tp, []):
            self._apply(record.key, record.value)
        self._position = await consumer.position(self._tp)
        self._moved.set()

    async def read_to_end(self, timeout: float = 30.0) -> None:
        """Until every entry written before this call has been read (``TransientError``
        after ``timeout`` seconds without getting there)."""
        consumer = self._consumer
        if consumer is None:
            return  # the topic does not exist
        try:
            end = (await consumer.end_offsets([self._tp]))[self._tp]
            async with asyncio.timeout(timeout):
                while self._position < end:
                    if self._task is None:
                        await self._fetch(timeout_ms=200)
                    else:
                        self._moved.clear()
                        await self._moved.wait()
        except KafkaError as exc:
            raise TransientError(f"cannot read {PARKING_TOPIC}: {exc}") from exc
        except TimeoutError:
            raise TransientError(f"timed out reading {PARKING_TOPIC}") from None

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode("utf-8", "replace")
        entry = None if value is None else _entry(value)
        if entry is None:
            self.entries.pop(name, None)
        else:
            self.entries[name] = entry
        if self.listener is not None:
            self.listener(name, entry)

    async def put(self, name: str, entry: Entry | None) -> None:
        """Write ``entry`` (``None``: a tombstone) and wait for the ack; ``TransientError``
        if Kafka does not take it. The entry shows in ``entries`` at once."""
        if self.producer is None:
            raise TransientError("this process writes no parking state")
        value = None if entry is None else entry.encode()
        try:
            await self.producer.send_and_wait(PARKING_TOPIC, value=value, key=name.encode())
        except KafkaError as exc:
            raise TransientError(f"could not write {PARKING_TOPIC}: {exc}") from exc
        if entry is None:
            self.entries.pop(name, None)
        else:
            self.entries[name] = entry

    def blocks(
        self, topic: str | None = None, partition: int | None = None, *, released: bool = False
    ) -> list[Block]:
        """The blocked keys (of ``topic``, of ``partition``); ``released``: with the keys
        released since."""
        return [
            e
            for e in self.entries.values()
            if isinstance(e, Block)
            and (released or not e.released)
            and (topic is None or e.topic == topic)
            and (partition is None or e.partition == partition)
        ]

    def pauses(self) -> list[Pause]:
        """The paused partitions."""
        return [e for e in self.entries.values() if isinstance(e, Pause)]


@contextlib.asynccontextmanager
async def read_parking(settings: Settings, *, write: bool = False) -> AsyncIterator[ParkingState]:
    """``ktb.parking`` read once to its end, for the commands and the API (a topic not
    created yet reads as empty); ``write``: with a producer of its own."""
    producer = kafka.producer(settings) if write else None
    if producer is not None:
        try:
            await kafka.start(producer, settings)
        except KafkaError as exc:
            raise TransientError(f"cannot reach Kafka: {exc}") from exc
    state = ParkingState(settings, producer)
    try:
        await state.open(create=False)
        yield state
    finally:
        await state.close()
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await producer.stop()


async def open_parking(
    settings: Settings, router: Router, producer: AIOKafkaProducer
) -> ParkingState | None:
    """The parking state of a bridge whose routes use ``park_key`` or ``pause`` (None
    otherwise), read to its end; ``<topic>.parked`` exists with as many partitions as
    each topic whose routes park."""
    if not router.uses_failure_policies:
        return None
    parking = {r.spec.topic for r in router.routes if r.spec.on_failure is FailurePolicy.PARK_KEY}
    plan = {parked_topic(t): len(await topic_partitions(settings, t)) for t in sorted(parking)}
    if plan:
        await provision_topics(settings, plan, 1, ProvisionReport(), grow=True)
    state = ParkingState(settings, producer)
    await state.open()
    return state


@contextlib.asynccontextmanager
async def open_policies(
    settings: Settings, ingress: Ingress, producer: AIOKafkaProducer, metrics: Metrics
) -> AsyncIterator[FailurePolicies | None]:
    """The failure policies of a live bridge (None when no route uses them), with the
    parking state open until exit."""
    parking = await open_parking(settings, ingress.router, producer)
    if parking is None:
        yield None
        return
    try:
        yield FailurePolicies(settings, ingress, parking, producer, metrics)
    finally:
        await parking.close()


# --- parked records ------------------------------------------------------------------


@dataclass
class ParkedRecord:
    """A record read back from ``<topic>.parked``: its original coordinates and own
    headers, so it goes through the engine as the record it was."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp: int
    blocked_by: str
    parked_offset: int
    parked_at: str | None = None

    def summary(self) -> dict[str, Any]:
        """The record as ``ktb parked list`` shows it."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "parked_offset": self.parked_offset,
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "blocked_by": self.blocked_by,
            "parked_at": self.parked_at,
            "event_id": ce_attribute(self.headers, "id"),
            "event_type": ce_attribute(self.headers, "type"),
        }


def _parked_of(record: Any) -> ParkedRecord | None:
    """A ``<topic>.parked`` record as a ``ParkedRecord``; None if it is not one."""
    headers = list(record.headers or ())
    topic = _header(headers, ORIGINAL_TOPIC)
    partition = _header(headers, ORIGINAL_PARTITION)
    offset = _header(headers, ORIGINAL_OFFSET)
    blocked_by = _header(headers, BLOCKED_BY)
    if topic is None or partition is None or offset is None or blocked_by is None:
        return None
    try:
        coordinates = int(partition), int(offset)
    except ValueError:
        return None
    return ParkedRecord(
        topic, coordinates[0], coordinates[1], record.key, record.value,
        [(k, v) for k, v in headers if k not in PARKED_HEADERS], record.timestamp, blocked_by,
        record.offset, _header(headers, PARKED_AT),
    )  # fmt: skip


async def parked_records(
    settings: Settings, topic: str, partition: int, start: int = 0
) -> list[ParkedRecord]:
    """The records of ``<topic>.parked[partition]`` from ``start`` to its end, in order."""
    tp = TopicPartition(parked_topic(topic), partition)
    out: list[ParkedRecord] = []
    async with reader(settings, tp.topic) as consumer:
        end = (await consumer.end_offsets([tp]))[tp]
        async for records in batches(consumer, tp, start, end):
            out.extend(p for p in map(_parked_of, records) if p is not None)
    return out


def held(records: Iterable[ParkedRecord], block: Block) -> list[ParkedRecord]:
    """The records ``block`` still holds parked: its key's, after its failing record, each
    original offset once (a record parked twice after a crash), in offset order."""
    out: dict[int, ParkedRecord] = {}
    for record in records:
        if record.key == block.key and record.offset > block.after:
            out.setdefault(record.offset, record)
    return [out[o] for o in sorted(out)]


# --- the engine's side -----------------------------------------------------------------

Process = Callable[[TopicPartition, "PartitionState", RecordLike], Awaitable[Result | None]]


@dataclass
class PartitionPolicies:
    """What the failure policies hold for one partition of the engine."""

    blocks: dict[bytes, Block] = field(default_factory=dict)
    lettered: dict[int, DeadLettered] = field(default_factory=dict)
    """Letters written whose block is not written yet (retried without a second letter)."""
    pause: Pause | None = None
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when an operator decided for ``pause``."""
    running: asyncio.Event = field(default_factory=asyncio.Event)
    """Clear from a pause until its record is done (a retry that fails pauses again):
    the partition's other keys wait on it."""

    def __post_init__(self) -> None:
        self.running.set()


class FailurePolicies:
    """Applies ``on_failure`` where the engine acts on a record; see the module docstring.

    ``live``: blocks and parked records are written (the bridge). Otherwise (a replay)
    the blocks on ``ktb.parking`` and those the run makes are honoured in memory: the
    records they hold are counted as parked, nothing is written, and ``pause`` acts
    like ``park_key`` (nobody is there to resume a replay).
    """

    def __init__(
        self,
        settings: Settings,
        ingress: Ingress,
        state: ParkingState | None,
        producer: AIOKafkaProducer | None,
        metrics: Metrics,
        *,
        live: bool = True,
    ) -> None:
        self.settings = settings
        self.ingress = ingress
        self.state = state
        self.producer = producer
        self.metrics = metrics
        self.live = live
        self.partitions: Mapping[TopicPartition, PartitionState] = {}
        """The engine's partitions (set by the engine)."""

    # --- partitions

    def load(self, tp: TopicPartition, state: PartitionState) -> list[Block]:
        """Take the blocks of ``tp`` from the state read so far; return the discarded ones
        (their release is due)."""
        if self.state is None:
            return []
        blocks = self.state.blocks(tp.topic, tp.partition, released=True)
        state.policies.blocks = {b.key: b for b in blocks}
        self._gauge(tp.topic)
        return [b for b in blocks if b.discarded and not b.released]

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer held: its parked records leave this bridge's gauge."""
        self._gauge(tp.topic)

    def _gauge(self, topic: str) -> None:
        total = sum(
            b.parked
            for tp, state in self.partitions.items()
            if tp.topic == topic
            for b in state.policies.blocks.values()
            if not b.released
        )
        self.metrics.parked_records.labels(topic).set(total)

    # --- acting on a record

    async def act(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike, process: Process
    ) -> Result | None:
        """Act on ``record`` under the policies: park it, release its key, or act on it
        and block its key if it is dead-lettered under ``park_key``. None: the partition
        is closing. ``TransientError`` propagates (the engine retries; each step is
        idempotent)."""
        mine = state.policies
        lettered = mine.lettered.get(record.offset)
        if lettered is not None:
            # Its letter is written; writing the block failed and is tried again.
            await self.block(tp, state, record, lettered)
            return lettered
        key = record.key
        block = mine.blocks.get(key) if key is not None else None
        if block is not None and block.released:
            if record.offset == block.after and self.live and not _redriven(record):
                return Result(Outcome.DEAD_LETTERED, detail=f"dead-lettered as {block.letter}")
            block = None  # released: the key flows (a record read again is a repeat)
        if block is not None and not isinstance(record, ParkedRecord):
            if record.offset == block.after and self.live:
                # The blocking record read again (its offset was not committed): its
                # letter is written already.
                return Result(Outcome.DEAD_LETTERED, detail=f"dead-lettered as {block.letter}")
            if record.offset <= block.after:
                # Read again from before the block (or replayed): acted on as before.
                return await self._act(tp, state, record)
            if _header(record.headers, REDRIVE_OF) == block.letter:
                # The blocking letter redriven: act on it; if that works, release the key.
                result = await self._act(tp, state, record)
                if isinstance(result, DeadLettered) and mine.blocks.get(block.key) is not block:
                    return result  # it failed again: the key is blocked by its new letter
                if await self.release(tp, state, block, process) is None:
                    return None
                return result
            if await self._parks(record):
                return await self._park(tp, state, record, block)
        return await self._act(tp, state, record)

    async def _act(self, tp: TopicPartition, state: PartitionState, record: RecordLike) -> Result:
        result = await self.ingress.handle(record, state.closed)
        if (
            isinstance(result, DeadLettered)
            and result.policy is not FailurePolicy.DEAD_LETTER
            and record.key is not None
        ):
            state.policies.lettered[record.offset] = result
            await self.block(tp, state, record, result)
        return result

    async def dead_letter(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike, error: PermanentError
    ) -> Result:
        """Dead-letter ``record`` for an error that kept recurring: its key is blocked when
        the topic's strictest policy asks for it (the route is not known); ``pause`` is
        raised as ``PauseRequested``."""
        policy = self.ingress.router.failure_policy(record.topic, None)
        if policy is FailurePolicy.PAUSE and self.live:
            raise PauseRequested(error)
        result = await self.ingress.dead_letter(record, error, policy)
        if result.policy is not FailurePolicy.DEAD_LETTER and record.key is not None:
            state.policies.lettered[record.offset] = result
            await self.block(tp, state, record, result)
        return result

    async def _parks(self, record: RecordLike) -> bool:
        """Whether the route that would handle ``record`` parks it (``park_key``, or
        ``pause``: a blocked key's records never overtake its letter)."""
        try:
            _, action = await self.ingress.predict(record)
        except PermanentError:  # it fails to decode or route: the topic's strictest policy
            action = None
        policy = self.ingress.router.failure_policy(
            record.topic, action.route if action is not None else None
        )
        return policy is not FailurePolicy.DEAD_LETTER

    async def block(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike, result: DeadLettered
    ) -> None:
        """Block ``record``'s key behind its letter (written, then kept in memory)."""
        mine = state.policies
        key = record.key
        assert key is not None
        previous = mine.blocks.get(key)
        if previous is not None and previous.released:
            previous = None
        letter = result.letter or f"{dlq_topic_of(record.topic)}:?:{record.offset}"
        if previous is None:
            block = Block(
                record.topic, record.partition, key, letter, record.offset,
                await self._parked_end(tp), tenant=_tenant(record),
            )  # fmt: skip
        elif isinstance(record, ParkedRecord):
            # A released record failed: the ones after it stay parked behind its letter.
            block = replace(previous, letter=letter, after=record.offset, discarded=False,
                            parked=max(0, previous.parked - 1))  # fmt: skip
        else:
            # The redriven blocking record failed again: the same records stay parked.
            block = replace(previous, letter=letter, discarded=False)
        if self.live and self.state is not None:
            await self.state.put(block.id, block)
        mine.blocks[key] = block
        mine.lettered.pop(record.offset, None)
        self._gauge(tp.topic)
        log.warning(
            "key blocked on %s[%d] by %s", tp.topic, tp.partition, letter,
            extra={"topic": tp.topic, "partition": tp.partition, "offset": record.offset},
        )  # fmt: skip

    async def _parked_end(self, tp: TopicPartition) -> int:
        if not self.live:
            return 0
        parked = TopicPartition(parked_topic(tp.topic), tp.partition)
        consumer = fetching_consumer(self.settings)
        try:
            await kafka.start(consumer, self.settings)
            return int((await consumer.end_offsets([parked]))[parked])
        except KafkaError as exc:
            raise TransientError(f"cannot read {parked.topic}: {exc}") from exc
        finally:
            await stop_consumer(consumer)

    async def _park(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike, block: Block
    ) -> Result:
        """Write ``record`` to ``<topic>.parked`` (unless an earlier run did) and count it."""
        detail = f"parked behind {block.letter}"
        if not self.live or record.offset <= block.last_parked:
            return Result(Outcome.PARKED, detail=detail)
        assert self.producer is not None and self.state is not None
        headers = [(k, v) for k, v in record.headers if k not in PARKED_HEADERS]
        headers += [
            (BLOCKED_BY, block.letter.encode()),
            (ORIGINAL_TOPIC, record.topic.encode()),
            (ORIGINAL_PARTITION, str(record.partition).encode()),
            (ORIGINAL_OFFSET, str(record.offset).encode()),
            (PARKED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        target = parked_topic(record.topic)
        try:
            await self.producer.send_and_wait(
                target, value=record.value, key=record.key, partition=record.partition,
                headers=headers,
            )  # fmt: skip
        except KafkaError as exc:
            raise TransientError(f"could not park a record in {target}: {exc}") from exc
        counted = replace(block, parked=block.parked + 1, last_parked=record.offset)
        await self.state.put(counted.id, counted)
        state.policies.blocks[block.key] = counted
        self.metrics.parked.labels(record.topic).inc()
        self._gauge(record.topic)
        log.info(
            "parked behind %s", block.letter,
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        )  # fmt: skip
        return Result(Outcome.PARKED, detail=detail)

    # --- releasing

    async def release(
        self, tp: TopicPartition, state: PartitionState, block: Block, process: Process
    ) -> bool | None:
        """Act on the records ``block`` holds, in order, through ``process`` (the engine),
        then lift the block. False if one of them failed and blocked the key again; None
        if the partition is closing."""
        mine = state.policies
        if not self.live:
            mine.blocks.pop(block.key, None)
            return True
        records = held(await parked_records(self.settings, tp.topic, tp.partition,
                                            block.scan_from), block)  # fmt: skip
        for parked in records:
            result = await process(tp, state, parked)
            if result is None:
                return None
            if isinstance(result, DeadLettered) and mine.blocks.get(block.key) is not block:
                return False
            self.metrics.released.labels(tp.topic).inc()
            current = mine.blocks.get(block.key)
            if current is not None:
                block = replace(current, after=parked.offset, parked=max(0, current.parked - 1))
                mine.blocks[block.key] = block
        assert self.state is not None
        done = replace(block, released=True, discarded=False, parked=0)
        await self.state.put(block.id, done)
        mine.blocks[block.key] = done
        self._gauge(tp.topic)
        log.info(
            "released %d parked records of a key on %s[%d]", len(records), tp.topic, tp.partition
        )
        return True

    # --- pausing

    async def pause(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike, exc: PauseRequested
    ) -> Decision | None:
        """Hold ``tp`` at ``record`` until an operator decides (None: the partition closed
        first). The pause is written to ``ktb.parking`` for ``ktb bridge resume`` and
        ``/readyz``; a decision already there for this record (made before a restart) is
        taken at once."""
        mine = state.policies
        pause = Pause(
            tp.topic, tp.partition, record.offset, exc.message, exc.error.error_type,
            datetime.now(UTC).isoformat(), exc.event_id or ce_attribute(list(record.headers), "id"),
            _tenant(record),
        )  # fmt: skip
        known = self.state.entries.get(pause.id) if self.state is not None else None
        if isinstance(known, Pause) and known.offset == record.offset and known.decision:
            decision: Decision | None = known.decision
        else:
            mine.pause = pause
            mine.decided.clear()
            mine.running.clear()
            self.metrics.partitions_paused.labels(tp.topic).inc()
            log.warning(
                "partition paused at %s[%d]@%d: %s", tp.topic, tp.partition, record.offset,
                exc.message, extra={"topic": tp.topic, "partition": tp.partition,
                                    "offset": record.offset, "error_type": pause.error_type},
            )  # fmt: skip
            try:
                await self._write_until(state, pause.id, pause)
                closed = asyncio.ensure_future(state.closed.wait())
                decided = asyncio.ensure_future(mine.decided.wait())
                try:
                    await asyncio.wait({closed, decided}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                    decided.cancel()
                decision = mine.pause.decision if mine.pause is not None else None
            finally:
                mine.pause = None
                self.metrics.partitions_paused.labels(tp.topic).dec()
        if decision is None:
            return None  # closing: the record is read again by the next owner
        log.info(
            "partition %s[%d] resumed at %d (%s)", tp.topic, tp.partition, record.offset,
            decision.value,
        )  # fmt: skip
        await self._write_until(state, pause.id, None)
        return decision

    async def _write_until(self, state: PartitionState, name: str, entry: Entry | None) -> None:
        """Write an entry, trying again while Kafka refuses, until the partition closes."""
        if self.state is None:
            return
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s, jitter=True)
        while not state.closing:
            try:
                await self.state.put(name, entry)
                return
            except TransientError as exc:
                log.warning("writing %s failed (%s); trying again", name, exc.message)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next()):
                        await state.closed.wait()

    def decided(self, tp: TopicPartition, state: PartitionState, entry: Pause) -> None:
        """Take an operator's decision written on ``ktb.parking`` for a paused partition."""
        mine = state.policies
        if (
            entry.decision is not None
            and mine.pause is not None
            and mine.pause.offset == entry.offset
        ):
            mine.pause = entry
            mine.decided.set()

    def discarded(self, tp: TopicPartition, state: PartitionState, block: Block) -> bool:
        """Take a discard written on ``ktb.parking``; whether a release is due."""
        current = state.policies.blocks.get(block.key)
        if (
            current is None
            or current.letter != block.letter
            or current.discarded
            or current.released
        ):
            return False
        state.policies.blocks[block.key] = replace(current, discarded=True)
        return True


def _redriven(record: RecordLike) -> bool:
    return _header(record.headers, REDRIVE_OF) is not None


def _tenant(record: RecordLike) -> str | None:
    return ce_attribute(list(record.headers), TENANT)


# --- commands: discard, list, resume ---------------------------------------------------


@dataclass
class DiscardReport:
    """What one discard did."""

    dlq_topic: str
    released: list[dict[str, Any]] = field(default_factory=list)
    """Letters that blocked a key: the bridge holding its partition releases it."""
    not_blocking: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


async def discard(
    settings: Settings, dlq_topic: str, refs: Iterable[Any], *, tenant: str | None = None
) -> DiscardReport:
    """Discard the letters at ``refs`` of ``dlq_topic``: each key one blocks is released
    (its parked records acted on in order by the bridge holding the partition).

    Letters of another tenant are unknown (``InvalidRequestError``), as for redrive.
    """
    from bridge.dlq.letters import check_dlq_topic
    from bridge.dlq.reading import letters_at

    check_dlq_topic(dlq_topic)
    wanted = sorted(set(refs))
    if not wanted:
        raise InvalidRequestError("name the letters to discard (--offsets)")
    letters = await letters_at(settings, dlq_topic, wanted, tenant=tenant, keep_values=False)
    report = DiscardReport(dlq_topic)
    async with read_parking(settings, write=True) as state:
        by_letter = {b.letter: b for b in state.blocks()}
        for letter in letters:
            name = letter_name(dlq_topic, letter.ref.partition, letter.ref.offset)
            block = by_letter.get(name)
            if block is None:
                report.not_blocking.append(str(letter.ref))
                continue
            if not block.discarded:
                await state.put(block.id, replace(block, discarded=True))
            report.released.append({
                "letter": str(letter.ref), "topic": block.topic, "partition": block.partition,
                "key": block.key.decode("utf-8", "replace"), "parked": block.parked,
            })  # fmt: skip
    return report


async def parked_counts(settings: Settings, dlq_topic: str) -> dict[str, int]:
    """Records parked behind each letter of ``dlq_topic`` (``PARTITION:OFFSET`` → count);
    empty when nothing was ever parked."""
    async with read_parking(settings) as state:
        blocks = state.blocks()
    prefix = dlq_topic + ":"
    return {b.letter[len(prefix) :]: b.parked for b in blocks if b.letter.startswith(prefix)}


async def list_parked(
    settings: Settings, topic: str, *, tenant: str | None = None
) -> list[dict[str, Any]]:
    """What is parked on ``topic`` now and why: each record a block still holds, with its
    blocking letter; records of other tenants are left out."""
    async with read_parking(settings) as state:
        blocks = state.blocks(topic)
    if not blocks:
        return []
    partitions = await topic_partitions(settings, parked_topic(topic))
    out: list[dict[str, Any]] = []
    for partition in partitions:
        mine = [b for b in blocks if b.partition == partition]
        if not mine:
            continue
        records = await parked_records(settings, topic, partition,
                                       min(b.scan_from for b in mine))  # fmt: skip
        for block in mine:
            for record in held(records, block):
                if tenant is not None and _tenant(record) != tenant:
                    continue
                out.append({**record.summary(), "blocking_letter": block.letter,
                            "released_when": "the letter is redriven or discarded"})  # fmt: skip
    return sorted(out, key=lambda r: (r["partition"], r["offset"]))


async def resume(
    settings: Settings,
    topic: str,
    partition: int,
    *,
    skip: bool = False,
    tenant: str | None = None,
) -> Pause:
    """Tell the bridge holding ``topic[partition]`` to try its paused record again, or
    (``skip``) to dead-letter it and go on. ``InvalidRequestError`` if it is not paused
    (or paused at a record of another tenant)."""
    async with read_parking(settings, write=True) as state:
        entry = state.entries.get(pause_id(topic, partition))
        if not isinstance(entry, Pause) or (tenant is not None and entry.tenant != tenant):
            raise InvalidRequestError(
                f"{topic}[{partition}] is not paused", topic=topic, partition=partition
            )
        decided = replace(entry, decision=Decision.SKIP if skip else Decision.RETRY)
        await state.put(decided.id, decided)
        return decided


async def paused_partitions(settings: Settings) -> list[Pause]:
    """Every paused partition, as ``ktb.parking`` holds them."""
    async with read_parking(settings) as state:
        return state.pauses()
