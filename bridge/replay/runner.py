"""Running a replay: read a plan's ranges and send every record through the bridge's ingress.

A replay reads with a consumer of its own (no group, nothing committed: the live
bridge's offsets are untouched) and hands each record to the same ``Ingress``
the live bridge uses, on the same per-key engine (``bridge.engine``), so
routing, dispatch, retries and dead-lettering are the live code.

- ``idempotent`` (default): live workflow ids; an already-processed range starts nothing
  (``ReplayDispatcher``, ``bridge.replay.lookups``).
- ``fresh``: workflow ids get a ``-replay-<generation>`` suffix, so processes run again.
- dry run: an ``Ingress`` with ``DryRun`` for a dispatcher and no DLQ publisher;
  nothing is acted on.

Records with the same key are acted on in offset order, other keys concurrently.
Progress is a per-partition position below which every record is done, and the
report counts exactly the records below it: a replay resumed from a checkpoint
counts no record twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from temporalio.client import Client

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.decoding import Decoder, open_decoder
from bridge.dispatch import DryRun, Executor
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.engine import CANCEL_GRACE_S, Engine, PartitionState
from bridge.envelope import RecordLike
from bridge.errors import BridgeError, InvalidRequestError, ReplayError
from bridge.ingress import Ingress
from bridge.kafka import stop_consumer
from bridge.observability.metrics import Metrics
from bridge.policies import FailurePolicies, ParkingState
from bridge.provenance import ProvenanceWriter
from bridge.replay.lookups import FreshIds, ReplayDispatcher
from bridge.replay.plan import ReplayMode, ReplayPlan, ReplayRequest
from bridge.replay.report import ReplayCheckpoint, ReplayReport
from bridge.routes import Router
from bridge.settings import Settings

IN_FLIGHT_PER_ACTION = 10
"""Records in flight per Temporal action slot (``replay_concurrency``)."""
PRODUCER_BATCH_BYTES = 256 * 1024
ProgressCallback = Callable[[ReplayCheckpoint], None]


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
        self.dry_run = plan.request.dry_run
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
        # The failure policies hold in a replay too, in memory: keys blocked on the live
        # bridge, and those the replay's own failures block, are not acted on out of order.
        self.policies = (
            FailurePolicies(settings, ingress, None, None, ingress.metrics, live=False)
            if ingress.router.uses_failure_policies and not self.dry_run
            else None
        )
        self.engine = Engine(
            ingress,
            max_in_flight=self.in_flight,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            on_done=self._on_done,
            policies=self.policies,
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
        if todo and self.policies is not None:
            await self._load_blocks()
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

    async def _load_blocks(self) -> None:
        """The keys blocked on the live bridge, from ``ktb.parking``."""
        assert self.policies is not None
        state = ParkingState(self.settings)
        await state.open()
        try:
            self.policies.state = state
            for part in self.parts:
                self.engine.load_policies(part.tp)
        finally:
            self.policies.state = None
            await state.close()

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


# --- the ingress of a replay, and one-shot replays (the CLI's foreground path) --------------


def replay_router(settings: Settings, routes: Sequence[str]) -> Router:
    """The routes file's router, restricted to ``routes`` when given."""
    router = Router.from_file(settings.routes_file)
    if not routes:
        return router
    try:
        return router.only(routes)
    except BridgeError as exc:
        raise InvalidRequestError(exc.message) from exc


def fresh_ids(executor: Executor, request: ReplayRequest) -> Executor:
    """``executor`` as the replay acts through it: on suffixed ids in fresh mode."""
    return FreshIds(executor, request.id_suffix) if request.id_suffix else executor


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
    async with (
        open_decoder(settings, catalog, router.config.envelope) as decoder,
        _replay_ingress(settings, request, catalog, router, decoder, metrics, client) as ingress,
    ):
        yield ingress


@contextlib.asynccontextmanager
async def _replay_ingress(
    settings: Settings,
    request: ReplayRequest,
    catalog: SchemaCatalog,
    router: Router,
    decoder: Decoder,
    metrics: Metrics | None,
    client: Client | None,
) -> AsyncIterator[Ingress]:
    """``replay_ingress`` once the decoder is open."""
    if request.dry_run:
        yield Ingress(
            catalog,
            router,
            fresh_ids(DryRun(), request),
            None,
            metrics,
            decoder=decoder,
            rate_limits=False,
        )
        return
    if client is None:
        raise ReplayError("a replay that acts needs a Temporal client")
    # Provenance batches of hundreds of items, thousands a second: with 16 KB batches
    # (the default) sends queue behind the one produce request in flight per partition.
    producer = kafka.producer(settings, max_batch_size=PRODUCER_BATCH_BYTES)
    await kafka.start(producer, settings)
    provenance = ProvenanceWriter.for_settings(producer, settings, via="replay")
    try:
        # Fresh ids are new by construction: only idempotent replays look them up first.
        dispatcher = ReplayDispatcher(
            client,
            settings.replay_concurrency,
            lookups=request.mode is ReplayMode.IDEMPOTENT,
            rpc_timeout=timedelta(seconds=settings.temporal_rpc_timeout_s),
            metrics=metrics,
        )
        yield Ingress(
            catalog,
            router,
            fresh_ids(dispatcher, request),
            DeadLetterPublisher(producer),
            metrics,
            provenance,
            decoder=decoder,
            # A replay is held to its own --rate: a route's tokens would also hold
            # back the duplicates an idempotent replay answers without Temporal.
            rate_limits=False,
        )
    finally:
        await provenance.close()
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
