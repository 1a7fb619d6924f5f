"""The live bridge: consume, act per key in order, commit the contiguous prefix.

- Records with the same key (same partition) are acted on in offset order; other
  keys run concurrently, at most ``max_in_flight`` at once.
- A partition's committed offset is the first offset not yet done, so it never
  passes a record that is not acted on or dead-lettered.
- Transient failures pause the partition and retry with capped exponential backoff.
- At most ``max_buffered`` records are held; past that, fetching pauses.
- On revoke, in-flight work of the revoked partitions is finished (or abandoned
  after a deadline) and the done prefix committed before they go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from bridge import kafka
from bridge.dlq import RecordLike
from bridge.errors import BridgeError, PermanentError, TransientError
from bridge.ingress import Ingress
from bridge.metrics import Metrics
from bridge.settings import Settings

log = logging.getLogger("ktb.consumer")

MAX_UNEXPECTED_ATTEMPTS = 5


@dataclass
class PartitionState:
    """Offsets fetched from one partition and whether each is done, in offset order."""

    pending: dict[int, bool] = field(default_factory=dict)
    keys: dict[bytes, deque[RecordLike]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    committed: int = -1
    failing: int = 0
    closing: bool = False
    """Set when the partition's remaining work is abandoned (revoke, shutdown): start no more."""

    def done_prefix(self) -> int | None:
        """Drop the leading done offsets; return the next offset to commit, if it moved."""
        last = None
        pending = self.pending
        while pending:
            first = next(iter(pending))
            if not pending[first]:
                break
            del pending[first]
            last = first
        return None if last is None else last + 1

    def outstanding(self) -> int:
        """Records fetched and not done."""
        return sum(1 for done in self.pending.values() if not done)


class InternalError(PermanentError):
    """An unexpected exception kept failing for one record; it is dead-lettered."""

    error_type = "internal_error"


class BridgeConsumer:
    """Runs one member of the bridge's consumer group."""

    def __init__(
        self,
        settings: Settings,
        ingress: Ingress,
        topics: Iterable[str],
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.ingress = ingress
        self.topics = sorted(set(topics))
        self.metrics = metrics or ingress.metrics
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.buffered = 0
        # Keys with records and no task yet. A task exists only for a key being acted
        # on (at most ``max_in_flight``), so a full buffer of distinct keys holds
        # records, not thousands of parked tasks.
        self._ready: deque[tuple[TopicPartition, PartitionState, bytes | None, deque[RecordLike]]]
        self._ready = deque()
        self._running = 0
        self._stopping = asyncio.Event()
        self._full = False
        self.consumer: AIOKafkaConsumer | None = None
        self.processed = 0

    # --- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop fetching, finish in-flight work, commit and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; returns after the final commit."""
        consumer = kafka.consumer(
            self.settings,
            group_id=self.settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.fetch_partition_bytes,
            isolation_level="read_committed",
        )
        self.consumer = consumer
        await kafka.start(consumer, self.settings)
        try:
            consumer.subscribe(self.topics, listener=_Listener(self))
            await self._loop(consumer)
            await self._drain(self.partitions, self.settings.shutdown_timeout_s)
            await self._commit()
        finally:
            with contextlib.suppress(KafkaError):
                await consumer.stop()
            self.consumer = None

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        next_commit = time.monotonic() + self.settings.commit_interval_s
        while not self._stopping.is_set():
            self._apply_room(consumer)
            room = max(1, self.settings.max_buffered - self.buffered)
            batch = await consumer.getmany(timeout_ms=100, max_records=min(room, 2000))
            for tp, records in batch.items():
                state = self.partitions.get(tp)
                if state is None:
                    continue
                self.metrics.events_consumed.labels(tp.topic).inc(len(records))
                for record in records:
                    self._enqueue(tp, state, record)
            self.metrics.in_flight.set(self.buffered)
            if time.monotonic() >= next_commit:
                await self._commit()
                self._update_lag(consumer)
                next_commit = time.monotonic() + self.settings.commit_interval_s

    def _apply_room(self, consumer: AIOKafkaConsumer) -> None:
        """Pause every partition while the buffer is full; resume the healthy ones after."""
        full = self.buffered >= self.settings.max_buffered
        if full == self._full:
            return
        self._full = full
        assigned = list(self.partitions)
        if full:
            consumer.pause(*assigned)
        else:
            consumer.resume(*[tp for tp in assigned if self.partitions[tp].failing == 0])

    # --- per record --------------------------------------------------------------

    def _enqueue(self, tp: TopicPartition, state: PartitionState, record: RecordLike) -> None:
        if record.offset in state.pending:
            return  # re-fetched after a seek; already queued
        state.pending[record.offset] = False
        self.buffered += 1
        key = record.key
        if key is not None and key in state.keys:
            state.keys[key].append(record)
            return
        queue: deque[RecordLike] = deque([record])
        if key is not None:
            state.keys[key] = queue
        self._ready.append((tp, state, key, queue))
        self._start_ready()

    def _start_ready(self) -> None:
        """Give waiting keys a task, oldest first, while fewer than ``max_in_flight`` run."""
        while self._ready and self._running < self.settings.max_in_flight:
            tp, state, key, queue = self._ready.popleft()
            if state.closing or self.partitions.get(tp) is not state:
                continue  # abandoned: its records are not done and will be redelivered
            self._running += 1
            task = asyncio.create_task(self._drain_key(tp, state, key, queue))
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)

    async def _drain_key(
        self,
        tp: TopicPartition,
        state: PartitionState,
        key: bytes | None,
        queue: deque[RecordLike],
    ) -> None:
        requeued = False
        try:
            while queue:
                record = queue[0]
                await self._process(tp, state, record)
                state.pending[record.offset] = True
                self.buffered -= 1
                self.processed += 1
                queue.popleft()
                if queue and self._ready:
                    # Other keys wait for a task: this one takes its turn again later,
                    # its remaining records still in order in its queue.
                    self._ready.append((tp, state, key, queue))
                    requeued = True
                    return
        finally:
            self._running -= 1
            if not requeued and key is not None and state.keys.get(key) is queue:
                del state.keys[key]
            self._start_ready()

    async def _process(self, tp: TopicPartition, state: PartitionState, record: RecordLike) -> None:
        delay = self.settings.retry_initial_s
        unexpected = 0
        failing = False
        try:
            while True:
                try:
                    await self.ingress.handle(record)
                    return
                except TransientError as exc:
                    reason = exc.message
                except BridgeError as exc:  # a non-permanent, non-transient bridge error
                    reason = exc.message
                    unexpected += 1
                except Exception as exc:
                    log.exception("unexpected error on %s@%s", tp, record.offset)
                    reason = repr(exc)
                    unexpected += 1
                if unexpected >= MAX_UNEXPECTED_ATTEMPTS:
                    await self.ingress.dead_letter(record, InternalError(reason))
                    return
                if not failing:
                    failing = True
                    if state.failing == 0:
                        # One warning per partition episode; each retry is a debug line.
                        log.warning(
                            "pausing %s[%d]: %s", tp.topic, tp.partition, reason,
                            extra={"topic": tp.topic, "partition": tp.partition,
                                   "offset": record.offset},
                        )  # fmt: skip
                    self._mark_failing(tp, state, +1)
                self.metrics.transient_retries.labels(tp.topic).inc()
                log.debug(
                    "retrying %s[%d]@%d in %.1fs: %s",
                    tp.topic, tp.partition, record.offset, delay, reason,
                )  # fmt: skip
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.settings.retry_max_s)
        finally:
            if failing:
                self._mark_failing(tp, state, -1)

    def _mark_failing(self, tp: TopicPartition, state: PartitionState, delta: int) -> None:
        state.failing += delta
        if delta < 0 and state.failing == 0:
            log.info("resuming %s[%d]", tp.topic, tp.partition)
        consumer = self.consumer
        if consumer is None or self.partitions.get(tp) is not state:
            return
        with contextlib.suppress(IllegalStateError):
            if state.failing > 0:
                consumer.pause(tp)
            elif not self._full:
                consumer.resume(tp)

    # --- commits and rebalances --------------------------------------------------

    async def _commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in list(only) if only is not None else list(self.partitions):
            state = self.partitions.get(tp)
            if state is None:
                continue
            nxt = state.done_prefix()
            if nxt is not None and nxt > state.committed:
                offsets[tp] = OffsetAndMetadata(nxt, "")
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The records stay uncommitted and are redelivered; actions are idempotent.
            log.warning("offset commit failed (%s); records will be redelivered", exc)
            return
        for tp, meta in offsets.items():
            state = self.partitions.get(tp)
            if state is not None:
                state.committed = meta.offset

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Set ``ktb_consumer_lag``: records from the committed offset to the partition's end.

        Refreshed on every commit tick, so lag that grows while nothing commits (a
        paused partition, a stuck key) shows. Before a partition's first commit the
        oldest record not done stands in for the committed offset.
        """
        for tp, state in self.partitions.items():
            highwater = consumer.highwater(tp)
            base = state.committed if state.committed >= 0 else next(iter(state.pending), None)
            if highwater is None or base is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - base)
            )

    async def _drain(self, partitions: Iterable[TopicPartition], timeout: float) -> None:
        """Wait for the work of ``partitions``; cancel what is left at the deadline.

        Keys waiting for a task start as running ones finish, so this waits until
        none of these partitions has a task, or the deadline passes.
        """
        states = [self.partitions[tp] for tp in partitions if tp in self.partitions]
        deadline = time.monotonic() + timeout
        while True:
            tasks = {t for state in states for t in state.tasks}
            remaining = deadline - time.monotonic()
            if not tasks or remaining <= 0:
                break
            await asyncio.wait(tasks, timeout=remaining)
        for state in states:
            state.closing = True
        pending = {t for state in states for t in state.tasks if not t.done()}
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "abandoned %d in-flight keys; their records will be redelivered", len(pending)
            )
            await asyncio.gather(*pending, return_exceptions=True)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish or abandon in-flight work of revoked partitions, commit, forget them."""
        mine = [tp for tp in revoked if tp in self.partitions]
        await self._drain(mine, self.settings.shutdown_timeout_s)
        await self._commit(mine)
        for tp in mine:
            state = self.partitions.pop(tp)
            self.buffered -= state.outstanding()
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions."""
        for tp in assigned:
            self.partitions.setdefault(tp, PartitionState())
        if self._full and self.consumer is not None:
            self.consumer.pause(*assigned)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, bridge: BridgeConsumer) -> None:
        self.bridge = bridge

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.bridge.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.bridge.on_assigned(set(assigned))
