"""Replay: read a range of a topic again and send every record through the bridge's ingress.

A replay reads with a consumer of its own (no group, nothing committed: the live
bridge's offsets are untouched) and hands each record to the same ``Ingress``
the live bridge uses, so routing, dispatch and dead-lettering are the live code.

- ``idempotent`` (default): live workflow ids; an already-processed range starts nothing.
  Starts of ids that already exist are answered from batched visibility lookups
  (``ReplayDispatcher``), the answer the start itself would give, without a call each.
- ``fresh``: workflow ids get a ``-replay-<generation>`` suffix, so processes run again.
- dry run: an ``Ingress`` without a dispatcher or DLQ publisher; nothing is acted on.

Ranges are ``[from, to)`` per partition, by offset or ISO-8601 time; they are
resolved to offsets once (``resolve_plan``), so a resumed replay reads exactly
the same records. Records with the same key are acted on in offset order, other
keys concurrently. Progress is a per-partition position below which every record
is done, and the report counts exactly the records below it: a replay resumed
from a checkpoint counts no record twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.client import Client
from temporalio.converter import PayloadConverter
from temporalio.service import RPCError, RPCStatusCode

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.dispatch import Dispatcher, Outcome, Result, check_tenant_id
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.engine import CANCEL_GRACE_S, Engine, PartitionState
from bridge.envelope import TENANT, Event, RecordLike, ce_attribute
from bridge.errors import BridgeError, InvalidRequestError
from bridge.ingress import Ingress
from bridge.kafka import stop_consumer
from bridge.observability.metrics import Metrics
from bridge.provenance import ProvenanceWriter
from bridge.routes import Action, ActionKind, Router
from bridge.settings import Settings
from bridge.temporal import visibility
from bridge.temporal.attributes import TENANT_ID

log = logging.getLogger("ktb.replay")

NOW = "now"
EARLIEST = "earliest"
UNROUTED = "(no route)"
IN_FLIGHT_PER_ACTION = 10
"""Records in flight per Temporal action slot (``replay_concurrency``)."""
PRODUCER_BATCH_BYTES = 256 * 1024
ProgressCallback = Callable[["ReplayCheckpoint"], None]


class ReplayError(BridgeError):
    """A replay could not run to the end."""

    error_type = "replay_error"


class ReplayMode(StrEnum):
    """Which workflow ids a replay uses."""

    IDEMPOTENT = "idempotent"
    FRESH = "fresh"


@dataclass
class ReplayRequest:
    """What to replay, as a person or the API asks for it."""

    topic: str
    start: str
    """First record: an offset, an ISO-8601 time or ``earliest``."""
    end: str = NOW
    """Exclusive end: an offset, an ISO-8601 time or ``now``."""
    partitions: list[int] = field(default_factory=list)
    """Partitions to replay; empty means all."""
    routes: list[str] = field(default_factory=list)
    """Routes to apply; empty means all."""
    mode: ReplayMode = ReplayMode.IDEMPOTENT
    dry_run: bool = False
    generation: str = ""
    """Fresh mode: the replay generation in the workflow id suffix (``new_generation()``)."""
    tenant: str | None = None
    """Only this tenant's events (``ce_tenantid``); the others are left out, not counted."""
    rate_limit: float = 0.0
    """Records per second at most; 0: the ``replay_rate_limit`` setting."""

    @property
    def id_suffix(self) -> str:
        """The workflow id suffix: empty in idempotent mode."""
        if self.mode is ReplayMode.FRESH:
            return f"-replay-{self.generation}"
        return ""

    def with_generation(self) -> ReplayRequest:
        """A copy with a fresh generation filled in when the mode needs one."""
        if self.mode is ReplayMode.FRESH and not self.generation:
            return dataclasses.replace(self, generation=new_generation())
        return self


def new_generation() -> str:
    """A replay generation: UTC time plus a random tag, sortable and unique in practice."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:4]}"


# --- range bounds --------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """One end of a range: an offset, a time (epoch ms), or open (``earliest``/``now``)."""

    offset: int | None = None
    time_ms: int | None = None

    @property
    def open(self) -> bool:
        """True for ``earliest`` / ``now``."""
        return self.offset is None and self.time_ms is None


def parse_bound(text: str, *, end: bool) -> Bound:
    """Parse ``--from``/``--to``: an offset, an ISO-8601 time, ``earliest`` or ``now``."""
    value = text.strip()
    if value.lower() == (NOW if end else EARLIEST):
        return Bound()
    if value.isdigit():
        return Bound(offset=int(value))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        words = "an offset, an ISO-8601 time or 'now'" if end else "an offset, an ISO-8601 time"
        raise InvalidRequestError(
            f"--{'to' if end else 'from'} {text!r} is not {words}"
            + ("" if end else " or 'earliest'")
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        stamp = int(moment.timestamp() * 1000)
    except (OverflowError, ValueError) as exc:
        raise InvalidRequestError(f"--{'to' if end else 'from'} {text!r}: {exc}") from None
    # Kafka has no records before the epoch: earlier times mean "from the first record".
    return Bound(time_ms=max(0, stamp))


def format_ms(ms: int) -> str:
    """Epoch milliseconds as an ISO-8601 UTC time."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# --- plans ------------------------------------------------------------------------------


@dataclass
class PartitionRange:
    """Offsets ``[start, end)`` of one partition."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """Offsets in the range."""
        return max(0, self.end - self.start)


@dataclass
class ReplayPlan:
    """A request resolved to concrete offsets; replays and resumptions read exactly this."""

    request: ReplayRequest
    ranges: list[PartitionRange]
    time_from_ms: int | None = None
    """With a time range, records older than this are outside it."""
    time_to_ms: int | None = None
    """With a time range, records at or after this are outside it."""

    @property
    def total(self) -> int:
        """Offsets to read (an upper bound on records: compaction and markers leave gaps)."""
        return sum(r.size for r in self.ranges)

    def selects(self, record: RecordLike) -> bool:
        """Whether a record inside the offsets is in the replay: time range and tenant."""
        stamp = record.timestamp
        if self.time_from_ms is not None and stamp < self.time_from_ms:
            return False
        if self.time_to_ms is not None and stamp >= self.time_to_ms:
            return False
        tenant = self.request.tenant
        return tenant is None or ce_attribute(record.headers, TENANT) == tenant


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of an existing topic; ``InvalidRequestError`` if there is no such topic."""
    admin = kafka.admin(settings)
    try:
        await admin.start()
        # Every topic, not this one by name: naming an unknown topic makes a broker
        # with auto.create.topics.enable create it.
        described = await admin.describe_topics()
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    for entry in described:
        if entry["topic"] == topic and entry["error_code"] == 0 and entry["partitions"]:
            return sorted(p["partition"] for p in entry["partitions"])
    raise InvalidRequestError(f"topic {topic!r} does not exist", topic=topic)


async def resolve_plan(settings: Settings, request: ReplayRequest) -> ReplayPlan:
    """Check a request and resolve its range to offsets; raise ``InvalidRequestError`` if wrong."""
    start = parse_bound(request.start, end=False)
    end = parse_bound(request.end, end=True)
    if start.offset is not None and end.offset is not None and start.offset > end.offset:
        raise InvalidRequestError(f"--from offset {start.offset} is after --to offset {end.offset}")
    if start.time_ms is not None and end.time_ms is not None and start.time_ms > end.time_ms:
        raise InvalidRequestError(f"--from {request.start} is after --to {request.end}")
    available = await topic_partitions(settings, request.topic)
    unknown = sorted(set(request.partitions) - set(available))
    if unknown:
        raise InvalidRequestError(
            f"topic {request.topic!r} has no partition {', '.join(map(str, unknown))} "
            f"(partitions: {', '.join(map(str, available))})",
            topic=request.topic,
        )
    selected = sorted(set(request.partitions)) or available
    consumer = kafka.consumer(settings, isolation_level="read_committed")
    await kafka.start(consumer, settings)
    try:
        tps = [TopicPartition(request.topic, p) for p in selected]
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        lasts = await consumer.end_offsets(tps)
        starts = await _offsets(consumer, tps, start, firsts, lasts, is_end=False)
        ends = await _offsets(consumer, tps, end, firsts, lasts, is_end=True)
    except KafkaError as exc:
        raise ReplayError(f"cannot read offsets of {request.topic!r}: {exc}") from exc
    finally:
        await stop_consumer(consumer)
    ranges = []
    for tp in tps:
        if starts[tp] > ends[tp]:
            raise InvalidRequestError(
                f"--from {request.start} is after --to {request.end} on partition {tp.partition} "
                f"(offsets {starts[tp]} > {ends[tp]})"
            )
        ranges.append(PartitionRange(tp.partition, starts[tp], ends[tp]))
    plan = ReplayPlan(request, ranges, start.time_ms, end.time_ms)
    if plan.total == 0:
        available_text = ", ".join(f"{tp.partition}: {firsts[tp]}..{lasts[tp]}" for tp in tps)
        raise InvalidRequestError(
            f"the range selects no records of {request.topic!r} "
            f"(offsets held per partition: {available_text})",
            topic=request.topic,
        )
    return plan


async def _offsets(
    consumer: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    bound: Bound,
    firsts: dict[TopicPartition, int],
    lasts: dict[TopicPartition, int],
    *,
    is_end: bool,
) -> dict[TopicPartition, int]:
    if bound.open:
        return dict(lasts if is_end else firsts)
    if bound.offset is not None:
        out = {}
        for tp in tps:
            if not is_end and bound.offset < firsts[tp]:
                raise InvalidRequestError(
                    f"--from offset {bound.offset} is before the oldest offset partition "
                    f"{tp.partition} still holds ({firsts[tp]}); older records were deleted",
                    topic=tp.topic,
                    partition=tp.partition,
                )
            out[tp] = min(bound.offset, lasts[tp])
        return out
    assert bound.time_ms is not None
    found = await consumer.offsets_for_times({tp: bound.time_ms for tp in tps})
    out = {}
    for tp in tps:
        hit = found.get(tp)
        if hit is None:
            out[tp] = lasts[tp]
            continue
        if not is_end and hit.offset == firsts[tp] and firsts[tp] > 0:
            # The oldest record left is already inside the range: some records of
            # the range may be among the ones retention deleted.
            raise InvalidRequestError(
                f"--from {format_ms(bound.time_ms)} is before the retention of partition "
                f"{tp.partition}: its oldest record (offset {hit.offset}) is from "
                f"{format_ms(hit.timestamp)} and older records were deleted",
                topic=tp.topic,
                partition=tp.partition,
            )
        out[tp] = hit.offset
    return out


# --- reports ----------------------------------------------------------------------------

_COUNTERS = {
    Outcome.STARTED: "started",
    Outcome.DUPLICATE: "duplicates",
    Outcome.SIGNALLED: "signalled",
    Outcome.UPDATED: "updated",
    Outcome.CANCELLED: "cancelled",
    Outcome.TERMINATED: "terminated",
    Outcome.SKIPPED: "skipped",
    Outcome.DEAD_LETTERED: "dead_lettered",
    Outcome.DRY_RUN: "would_act",
}


@dataclass
class ReplayReport:
    """What a replay did (or, in a dry run, would do), counted once per record."""

    read: int = 0
    matched: int = 0
    started: int = 0
    duplicates: int = 0
    signalled: int = 0
    updated: int = 0
    cancelled: int = 0
    terminated: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    would_act: int = 0
    """Dry runs: records a route would act on."""
    per_route: dict[str, dict[str, int]] = field(default_factory=dict)
    """Route → outcome (or, in a dry run, action kind) → records."""
    examples: dict[str, str] = field(default_factory=dict)
    """Route → the first workflow id it touched (or would touch)."""

    def add(self, result: Result) -> None:
        """Count one record's result."""
        self.read += 1
        outcome = result.outcome
        name = _COUNTERS[outcome]
        setattr(self, name, getattr(self, name) + 1)
        route = result.route or UNROUTED
        if result.route is not None:
            self.matched += 1
            if result.workflow_id and route not in self.examples:
                self.examples[route] = result.workflow_id
        label = (result.action or "") if outcome is Outcome.DRY_RUN else outcome.value
        tally = self.per_route.setdefault(route, {})
        tally[label] = tally.get(label, 0) + 1

    def snapshot(self) -> ReplayReport:
        """An independent copy (heartbeats and signals serialise it later)."""
        return ReplayReport(
            **{name: getattr(self, name) for name in ("read", "matched", *_COUNTERS.values())},
            per_route={k: dict(v) for k, v in self.per_route.items()},
            examples=dict(self.examples),
        )

    def counters(self) -> dict[str, int]:
        """The scalar counters, in report order."""
        return {name: getattr(self, name) for name in ("read", "matched", *_COUNTERS.values())}


@dataclass
class ReplayCheckpoint:
    """Where a replay is: next offset per range (plan order) and the report up to there."""

    positions: list[int]
    report: ReplayReport
    total: int = 0
    """Offsets in the plan."""
    remaining: int = 0
    """Offsets of the plan not yet behind the positions."""

    @property
    def done(self) -> int:
        """Offsets of the plan behind the positions."""
        return self.total - self.remaining


def progress_line(done: int, total: int, elapsed: float, width: int = 30) -> str:
    """``[#####.....]  250/500  50%  1,234 rec/s  ETA 0:00:02`` for a terminal."""
    total = max(total, 1)
    share = min(1.0, done / total)
    filled = int(share * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    if rate > 0 and done < total:
        left = int((total - done) / rate)
        eta = f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    elif done >= total:
        eta = "done"
    else:
        eta = "ETA --:--:--"
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done:,}/{total:,} {share:4.0%}  {rate:,.0f} rec/s  {eta}"


# --- running ----------------------------------------------------------------------------


class _Partition:
    """Where the replay of one range stands."""

    __slots__ = ("end", "position", "read_done", "tp")

    def __init__(self, tp: TopicPartition, position: int, end: int) -> None:
        self.tp = tp
        self.position = position
        """Every offset below this is done and counted."""
        self.end = end
        self.read_done = position >= end


class ReplayRunner:
    """Reads a plan's ranges and sends every record through ``ingress`` on the live
    per-key engine (``bridge.engine``): per key in order, retried and dead-lettered
    exactly as live consumption does. Nothing is committed; the position of each range
    is its done prefix, and the report counts each record once as it passes it."""

    def __init__(
        self,
        settings: Settings,
        ingress: Ingress,
        plan: ReplayPlan,
        checkpoint: ReplayCheckpoint | None = None,
        *,
        in_flight: int | None = None,
        chunk: int | None = None,
        on_progress: ProgressCallback | None = None,
        progress_every_s: float = 0.25,
    ) -> None:
        self.settings = settings
        self.ingress = ingress
        self.plan = plan
        self.dry_run = ingress.dispatcher is None
        # Records wait in flight for lookups and for the dispatcher's action slots.
        self.in_flight = in_flight or settings.replay_concurrency * IN_FLIGHT_PER_ACTION
        self.chunk = chunk or settings.replay_chunk
        self.max_buffered = max(self.chunk, self.in_flight * 2)
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        positions = checkpoint.positions if checkpoint else [r.start for r in plan.ranges]
        if len(positions) != len(plan.ranges):
            raise ReplayError("checkpoint does not belong to this plan")
        self.report = checkpoint.report.snapshot() if checkpoint else ReplayReport()
        self.parts = [
            _Partition(TopicPartition(plan.request.topic, r.partition), max(pos, r.start), r.end)
            for r, pos in zip(plan.ranges, positions, strict=True)
        ]
        self._by_tp = {part.tp: part for part in self.parts}
        self.engine = Engine(
            ingress,
            max_in_flight=self.in_flight,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            on_done=self._on_done,
        )
        for part in self.parts:
            self.engine.assign(part.tp)
        self._next_progress = 0.0
        self.rate = plan.request.rate_limit or settings.replay_rate_limit
        self._paced = 0
        self._pace_start = 0.0

    def checkpoint(self) -> ReplayCheckpoint:
        """The current position and report, as an independent value."""
        remaining = sum(max(0, p.end - p.position) for p in self.parts)
        return ReplayCheckpoint(
            [p.position for p in self.parts], self.report.snapshot(), self.plan.total, remaining
        )

    async def run(self) -> ReplayReport:
        """Read and act on every record of the plan; return the report."""
        todo = [p for p in self.parts if not p.read_done]
        if todo:
            consumer = kafka.consumer(
                self.settings,
                isolation_level="read_committed",
                auto_offset_reset="none",
                max_partition_fetch_bytes=1 << 20,
            )
            await kafka.start(consumer, settings=self.settings)
            try:
                consumer.assign([p.tp for p in todo])
                for p in todo:
                    consumer.seek(p.tp, p.position)
                await self._read(consumer, todo)
                while not await self.engine.idle(self.progress_every_s):
                    self._progress()
            finally:
                # Nothing is left after a full read; after a failure, stop at once.
                await self.engine.drain([p.tp for p in self.parts], CANCEL_GRACE_S)
                await stop_consumer(consumer)
        for part in self.parts:
            self._advance(part)
        self._progress(force=True)
        return self.report

    async def _read(self, consumer: AIOKafkaConsumer, todo: list[_Partition]) -> None:
        reading = {p.tp: p for p in todo}
        self._pace_start = time.monotonic()
        while reading:
            await self.engine.wait_for_room(self.max_buffered)
            room = self.max_buffered - self.engine.buffered
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=min(room, self.chunk))
            except OffsetOutOfRangeError as exc:
                raise ReplayError(
                    f"records of {self.plan.request.topic!r} were deleted while replaying: {exc}"
                ) from exc
            for tp, records in batch.items():
                part = reading.get(tp)
                if part is None:
                    continue
                for record in records:
                    if record.offset >= part.end:
                        break
                    if self.rate:
                        await self._pace()
                    if not self.plan.selects(record):
                        self.engine.pass_over(tp, record.offset)
                    elif self.dry_run:
                        await self._handle_now(tp, record)
                    else:
                        self.engine.submit(tp, record)
            for tp, part in list(reading.items()):
                if await consumer.position(tp) >= part.end:
                    part.read_done = True
                    consumer.pause(tp)
                    del reading[tp]
                    self._advance(part)
            self._progress()

    async def _pace(self) -> None:
        """Hold the replay to ``rate`` records per second (easing the load on Temporal)."""
        self._paced += 1
        delay = self._pace_start + self._paced / self.rate - time.monotonic()
        if delay > 0.002:
            await asyncio.sleep(delay)

    async def _handle_now(self, tp: TopicPartition, record: RecordLike) -> None:
        """A dry run's record: its ingress never waits nor fails, so it is handled in the
        read loop, in offset order, without a task of its own."""
        state = self.engine.partitions[tp]
        if state.take(record.offset):
            state.done(record.offset, await self.ingress.handle(record))
            self._on_done(tp, state)

    def _on_done(self, tp: TopicPartition, state: PartitionState) -> None:
        self._advance(self._by_tp[tp])

    def _advance(self, part: _Partition) -> None:
        """Move ``position`` over the done prefix, counting each record as it passes."""
        state = self.engine.partitions[part.tp]
        for result in state.advance():
            self.report.add(result)
        part.position = max(part.position, state.done_to)
        if not state.pending and part.read_done:
            part.position = max(part.position, part.end)
        self._progress()

    def _progress(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now >= self._next_progress:
            self._next_progress = now + self.progress_every_s
            self.on_progress(self.checkpoint())


# --- idempotent replays of processed ranges -------------------------------------------------

LOOKUP_BATCH = 250
MIN_LOOKUP_BATCH = 20
LOOKUP_WINDOW_S = 0.002
LOOKUP_QUERIES = 2


@dataclass(frozen=True)
class Known:
    """A workflow visibility lists: its latest run and the tenant it belongs to."""

    run_id: str
    tenant: str | None


_PAYLOADS = PayloadConverter.default


class KnownWorkflows:
    """Finds which workflow ids exist, many per visibility query (``WorkflowId IN (...)``).

    At most ``queries`` queries run at once. Ids asked for while they all run wait
    and go out together, up to ``batch`` per query, as soon as one returns: the
    batch grows with the server's latency instead of the number of queries (many
    small concurrent queries are what a visibility store answers slowest). With a
    query slot free, ids asked for within ``window_s`` of each other share a query.

    ``None`` means "not known to exist": the id is not listed or the query failed;
    callers fall back to the action. A query the server rejects halves the batch
    (the query may exceed the server's length limit); when even small batches are
    rejected, visibility cannot answer such queries and no more are made.
    """

    def __init__(
        self,
        client: Client,
        batch: int = LOOKUP_BATCH,
        window_s: float = LOOKUP_WINDOW_S,
        queries: int = LOOKUP_QUERIES,
    ) -> None:
        self.client = client
        self.batch = batch
        self.window_s = window_s
        self.queries = queries
        self.enabled = True
        self._waiting: dict[str, list[asyncio.Future[Known | None]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def lookup(self, workflow_id: str) -> Known | None:
        """The latest run of ``workflow_id`` and its tenant if visibility lists it."""
        if not self.enabled or not visibility.is_safe(workflow_id):
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Known | None] = loop.create_future()
        self._waiting.setdefault(workflow_id, []).append(future)
        if len(self._running) < self.queries:
            if len(self._waiting) >= self.batch:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(self.window_s, self._flush)
        # Otherwise the next query to return sends it.
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and len(self._running) < self.queries:
            ids = list(itertools.islice(self._waiting, self.batch))
            task = asyncio.create_task(self._query({i: self._waiting.pop(i) for i in ids}))
            self._running.add(task)
            task.add_done_callback(self._query_done)

    def _query_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._flush()

    async def _listed(self, query: str, page_size: int) -> dict[str, Known]:
        """Workflow id -> latest run (and its tenant) of the executions ``query`` lists.

        The raw RPC rather than ``Client.list_workflows``, which decodes every
        execution's memo and search attributes: most of a replay's CPU when each
        row only needs its ids and one attribute.
        """
        found: dict[str, Known] = {}
        request = ListWorkflowExecutionsRequest(
            namespace=self.client.namespace, query=query, page_size=page_size
        )
        while True:
            page = await self.client.workflow_service.list_workflow_executions(request, retry=True)
            for info in page.executions:
                # Newest first: the first run listed is the one a start would meet.
                workflow_id = info.execution.workflow_id
                if workflow_id not in found:
                    tenant = info.search_attributes.indexed_fields.get(TENANT_ID.name)
                    found[workflow_id] = Known(
                        info.execution.run_id,
                        _PAYLOADS.from_payload(tenant, str) if tenant is not None else None,
                    )
            if not page.next_page_token:
                return found
            request.next_page_token = page.next_page_token

    async def _query(self, waiting: dict[str, list[asyncio.Future[Known | None]]]) -> None:
        found: dict[str, Known] = {}
        try:
            if self.enabled:
                ids = ",".join(f"'{workflow_id}'" for workflow_id in waiting)
                found = await self._listed(f"WorkflowId IN ({ids})", len(waiting) + 10)
        except RPCError as exc:
            if exc.status is RPCStatusCode.INVALID_ARGUMENT:
                # Half the rejected query, not the current batch: concurrent queries
                # rejected together shrink it once.
                self.batch = min(self.batch, len(waiting) // 2)
                if self.batch < MIN_LOOKUP_BATCH:
                    self.enabled = False
            log.debug("workflow lookup failed (%s); acting on these records instead", exc)
        finally:
            for workflow_id, futures in waiting.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(workflow_id))


class ReplayDispatcher(Dispatcher):
    """The live dispatcher with a bound on Temporal actions and, for idempotent
    replays, one shortcut.

    At most ``actions`` actions run at once, however many records are in flight.
    A start whose route rejects duplicate ids and ignores duplicates answers
    "duplicate" for any id that already exists, running or closed: with
    ``lookups`` on, such ids are found by batched visibility queries, so a range
    the bridge already processed costs one query per batch instead of one start
    per record. Ids visibility does not list yet go through the normal start.
    """

    def __init__(
        self,
        client: Client,
        actions: int,
        lookups: bool = True,
        known: KnownWorkflows | None = None,
        rpc_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        super().__init__(client, rpc_timeout)
        self.known = known or KnownWorkflows(client)
        self.lookups = lookups
        self._actions = asyncio.Semaphore(actions)

    async def execute(self, action: Action, event: Event) -> Result:
        """Answer known duplicates from visibility; carry out everything else as live."""
        if (
            self.lookups
            and action.kind is ActionKind.START
            and action.id_reuse_policy == "reject_duplicate"
            and action.on_duplicate == "ignore"
        ):
            known = await self.known.lookup(action.workflow_id)
            if known is not None:
                check_tenant_id(known.tenant, action, event)
                return self._result(Outcome.DUPLICATE, action, known.run_id, "already exists")
        async with self._actions:
            return await super().execute(action, event)


# --- one-shot replays (the CLI's foreground path) ------------------------------------------


def replay_router(settings: Settings, routes: Sequence[str]) -> Router:
    """The routes file's router, restricted to ``routes`` when given."""
    router = Router.from_file(settings.routes_file)
    if not routes:
        return router
    try:
        return router.only(routes)
    except BridgeError as exc:
        raise InvalidRequestError(exc.message) from exc


@contextlib.asynccontextmanager
async def replay_ingress(
    settings: Settings,
    request: ReplayRequest,
    metrics: Metrics | None = None,
    client: Client | None = None,
) -> AsyncIterator[Ingress]:
    """The ingress a replay uses: live routes and dispatcher, or neither for a dry run.

    ``client`` is a connected Temporal client (required unless it is a dry run).
    """
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    router = replay_router(settings, request.routes)
    if request.dry_run:
        yield Ingress(catalog, router, None, None, metrics, request.id_suffix)
        return
    if client is None:
        raise ReplayError("a replay that acts needs a Temporal client")
    # One provenance record per event, thousands a second: with 16 KB batches (the
    # default) sends queue behind the one produce request in flight per partition.
    producer = kafka.producer(settings, max_batch_size=PRODUCER_BATCH_BYTES)
    await kafka.start(producer, settings)
    try:
        # Fresh ids are new by construction: only idempotent replays look them up first.
        dispatcher = ReplayDispatcher(
            client,
            settings.replay_concurrency,
            lookups=request.mode is ReplayMode.IDEMPOTENT,
            rpc_timeout=timedelta(seconds=settings.temporal_rpc_timeout_s),
        )
        yield Ingress(
            catalog,
            router,
            dispatcher,
            DeadLetterPublisher(producer),
            metrics,
            request.id_suffix,
            ProvenanceWriter(producer, settings.provenance_topic, via="replay"),
        )
    finally:
        await producer.stop()


async def run_replay(
    settings: Settings,
    plan: ReplayPlan,
    *,
    client: Client | None = None,
    on_progress: ProgressCallback | None = None,
    metrics: Metrics | None = None,
) -> ReplayReport:
    """Run a resolved plan in this process and return the report."""
    async with replay_ingress(settings, plan.request, metrics, client) as ingress:
        runner = ReplayRunner(settings, ingress, plan, on_progress=on_progress)
        return await runner.run()
