"""The live bridge: consume, act per key in order, commit the contiguous prefix.

- Records with the same key (same partition) are acted on in offset order; other
  keys run concurrently, at most ``max_in_flight`` at once.
- A partition's committed offset is the first offset not yet done, so it never
  passes a record that is not acted on or dead-lettered. Progress is kept until a
  commit of it succeeds, and one commit is in flight at a time, so a failed commit
  is made again and committed offsets never go back.
- Transient failures pause the partition and retry with capped exponential backoff;
  so does a dead-letter write that fails. Only its partition closing (revoke,
  shutdown) ends a key's work early, and then its records stay not done.
- At most ``max_buffered`` records are held; past that, fetching pauses.
- The rebalance budget: the group waits ``rebalance_timeout_s`` for a member to
  rejoin. On revoke, revoked partitions start nothing more and keys waiting in
  backoff are abandoned at once; the action in flight per key may finish within
  ``revoke_timeout_s``, then the done prefix is committed. Settings keep the revoke
  well inside the rebalance timeout, so a slow Temporal never gets a member expelled.
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
CANCEL_GRACE_S = 1.0
"""How long cancelled key tasks get to end before a drain goes on without them."""


@dataclass
class PartitionState:
    """One assigned partition: offsets fetched and whether each is done, in offset order,
    and how far its done prefix has been committed."""

    pending: dict[int, bool] = field(default_factory=dict)
    keys: dict[bytes, deque[RecordLike]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    done_to: int = -1
    """The end of the done prefix (the offset to commit); kept until a commit reaches it."""
    committed: int = -1
    """The highest offset a commit of this assignment has confirmed."""
    fetched_to: int = -1
    """One past the highest offset taken; a record below it was taken already."""
    failing: int = 0
    closing: bool = False
    """Set when the partition is revoked or the bridge stops: start nothing more."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set with ``closing``; wakes keys waiting in backoff so they give up at once."""

    def take(self, offset: int) -> bool:
        """Track a fetched record; False if it was taken already (re-fetched)."""
        if offset < self.fetched_to:
            return False
        self.pending[offset] = False
        self.fetched_to = offset + 1
        return True

    def done(self, offset: int) -> None:
        """Mark a record acted on or dead-lettered."""
        self.pending[offset] = True

    def passed(self, position: int) -> None:
        """The consumer's position, read while every record taken is done.

        Offsets below it that were never delivered (a transaction's commit marker,
        records of an aborted transaction) count as done, so an idle partition
        commits up to its end offset rather than one short of it.
        """
        if position > self.fetched_to and all(self.pending.values()):
            self.pending[position - 1] = True
            self.fetched_to = position

    def commit_point(self) -> int | None:
        """The offset to commit, if the done prefix is past the last confirmed commit.

        The leading done offsets fold into ``done_to``, which stays until a commit
        reaches it: a commit that fails is made again from the same point.
        """
        pending = self.pending
        while pending:
            first = next(iter(pending))
            if not pending[first]:
                break
            del pending[first]
            self.done_to = first + 1
        return self.done_to if self.done_to > self.committed else None

    def committed_to(self, offset: int) -> None:
        """Record a successful commit of ``offset``; the committed offset never decreases."""
        self.committed = max(self.committed, offset)

    def oldest_not_committed(self) -> int | None:
        """The first offset fetched and not known to be committed, if any."""
        if self.done_to >= 0:
            return self.done_to
        return next(iter(self.pending), None)

    def outstanding(self) -> int:
        """Records fetched and not done."""
        return sum(1 for done in self.pending.values() if not done)

    def close(self) -> None:
        """Start no more of this partition's records; wake keys waiting in backoff."""
        self.closing = True
        self.closed.set()


class InternalError(PermanentError):
    """An unexpected exception kept failing for one record; it is dead-lettered."""

    error_type = "internal_error"


def _raise_if_cancelling() -> None:
    """Go on with a cancellation that a library turned into an error or a result."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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
        self._commit_task: asyncio.Task[None] | None = None
        # Set when a commit is refused because this member's generation has ended;
        # nothing is committed again before the group assigns partitions anew.
        self._generation_ended = False
        self.consumer: AIOKafkaConsumer | None = None
        self.processed = 0

    # --- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop fetching, finish in-flight work, commit and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; returns after the final commit.

        After ``stop()`` it returns within ``shutdown_timeout_s`` whatever Temporal
        does: in-flight actions get most of it, the final commit and leaving the
        group the rest.
        """
        s = self.settings
        consumer = kafka.consumer(
            s,
            group_id=s.group_id,
            group_instance_id=s.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.fetch_partition_bytes,
            isolation_level="read_committed",
            session_timeout_ms=round(s.session_timeout_s * 1000),
            heartbeat_interval_ms=round(s.heartbeat_interval_s * 1000),
            rebalance_timeout_ms=round(s.rebalance_timeout_s * 1000),
        )
        self.consumer = consumer
        await kafka.start(consumer, s)
        reserve = min(s.commit_timeout_s, s.shutdown_timeout_s / 4)
        deadline: float | None = None
        try:
            consumer.subscribe(self.topics, listener=_Listener(self))
            await self._loop(consumer)
            deadline = time.monotonic() + s.shutdown_timeout_s
            await self._drain(list(self.partitions), s.shutdown_timeout_s - 2 * reserve)
            await self._commit(timeout=deadline - reserve - time.monotonic())
        finally:
            if self._commit_task is not None:
                self._commit_task.cancel()
            remaining = reserve if deadline is None else deadline - time.monotonic()
            try:
                await asyncio.wait_for(consumer.stop(), max(remaining, 0.1))
            except (KafkaError, TimeoutError) as exc:
                log.warning("leaving the consumer group did not complete: %r", exc)
            self.consumer = None

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        next_commit = time.monotonic() + self.settings.commit_interval_s
        while not self._stopping.is_set():
            self._apply_room(consumer)
            room = max(1, self.settings.max_buffered - self.buffered)
            batch = await consumer.getmany(timeout_ms=100, max_records=min(room, 2000))
            for tp, records in batch.items():
                state = self.partitions.get(tp)
                if state is None or state.closing:
                    continue  # revoked: its next owner fetches these
                self.metrics.events_consumed.labels(tp.topic).inc(len(records))
                for record in records:
                    self._enqueue(tp, state, record)
            self.metrics.in_flight.set(self.buffered)
            if time.monotonic() >= next_commit:
                await self._note_positions(consumer)
                # Never waited for here: fetching goes on while a commit is in flight.
                self._begin_commit()
                self._update_lag(consumer)
                next_commit = time.monotonic() + self.settings.commit_interval_s

    async def _note_positions(self, consumer: AIOKafkaConsumer) -> None:
        """Tell idle partitions where the consumer stands (past transaction markers)."""
        for tp, state in list(self.partitions.items()):
            if state.closing or not all(state.pending.values()):
                continue
            try:
                state.passed(await consumer.position(tp))
            except (IllegalStateError, KafkaError):
                continue  # revoked meanwhile, or no position yet: the next tick tries

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
        if not state.take(record.offset):
            return  # re-fetched after a seek; already queued
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
        """Act on a key's records in order until none is left, its turn ends or its
        partition closes. The key keeps its queue while records remain in it, so a
        later record of the key never overtakes an earlier one."""
        requeued = False
        try:
            while queue and not state.closing:
                record = queue[0]
                if not await self._process(tp, state, record):
                    break  # the partition closed: this record and the rest stay not done
                state.done(record.offset)
                if self.partitions.get(tp) is state:
                    self.buffered -= 1  # else the revoke already took the partition's count
                self.processed += 1
                queue.popleft()
                if queue and self._ready:
                    # Other keys wait for a task: this one takes its turn again later,
                    # its remaining records still in order in its queue.
                    self._ready.append((tp, state, key, queue))
                    requeued = True
                    return
        except Exception:
            # _process handles every error of an action; this is a bug of our own. The
            # key goes back in line rather than losing its place (and its records).
            log.exception("key task on %s[%d] failed", tp.topic, tp.partition)
            if queue and not state.closing and self.partitions.get(tp) is state:
                self._ready.append((tp, state, key, queue))
                requeued = True
        finally:
            self._running -= 1
            if not requeued and not queue and key is not None and state.keys.get(key) is queue:
                del state.keys[key]
            self._start_ready()

    async def _process(self, tp: TopicPartition, state: PartitionState, record: RecordLike) -> bool:
        """Act on ``record`` until it is done (True) or its partition closes (False).

        Transient errors and failing dead-letter writes are retried with backoff while
        the partition is paused; an unexpected error that persists for
        ``MAX_UNEXPECTED_ATTEMPTS`` tries dead-letters the record. A cancellation goes
        on even when a library below turned it into an error or a result.
        """
        delay = self.settings.retry_initial_s
        unexpected = 0
        letter: InternalError | None = None
        failing = False
        try:
            while not state.closing:
                try:
                    if letter is None:
                        await self.ingress.handle(record)
                    else:
                        await self.ingress.dead_letter(record, letter)
                    _raise_if_cancelling()
                    return True
                except TransientError as exc:
                    reason = exc.message
                except BridgeError as exc:  # a non-permanent, non-transient bridge error
                    reason = exc.message
                    unexpected += 1
                except Exception as exc:
                    log.exception("unexpected error on %s@%s", tp, record.offset)
                    reason = repr(exc)
                    unexpected += 1
                _raise_if_cancelling()
                if letter is None and unexpected >= MAX_UNEXPECTED_ATTEMPTS:
                    letter = InternalError(reason)
                    continue  # the dead letter is written at once; if that fails, retried
                if letter is not None:
                    reason = f"dead-lettering failed: {reason}"
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
                await self._backoff(state, delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.settings.retry_max_s)
            return False
        finally:
            if failing:
                self._mark_failing(tp, state, -1)

    @staticmethod
    async def _backoff(state: PartitionState, delay: float) -> None:
        """Sleep ``delay`` seconds, or until the partition closes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await state.closed.wait()

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

    def _begin_commit(
        self, only: Iterable[TopicPartition] | None = None
    ) -> tuple[asyncio.Task[None] | None, bool]:
        """Start committing the done prefix of ``only`` (default: every partition).

        At most one commit is in flight: while one is, none starts and that one is
        returned with False; a started commit is returned with True. Nothing is sent
        for a generation that has ended.
        """
        inflight = self._commit_task
        if inflight is not None and not inflight.done():
            return inflight, False
        consumer = self.consumer
        if consumer is None or self._generation_ended:
            return None, False
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        states: dict[TopicPartition, PartitionState] = {}
        for tp in list(only) if only is not None else list(self.partitions):
            state = self.partitions.get(tp)
            nxt = state.commit_point() if state is not None else None
            if state is not None and nxt is not None:
                offsets[tp] = OffsetAndMetadata(nxt, "")
                states[tp] = state
        if not offsets:
            return None, False
        task = asyncio.create_task(self._send_commit(consumer, offsets, states))
        self._commit_task = task
        return task, True

    async def _send_commit(
        self,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        states: dict[TopicPartition, PartitionState],
    ) -> None:
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            # UnknownMemberId, IllegalGeneration or RebalanceInProgress: the partitions
            # may have a new owner. The rejoin that follows assigns them anew.
            self._generation_ended = True
            log.warning(
                "offset commit refused, this member's generation has ended (%s); the "
                "records go to the partitions' next owner", exc.__cause__ or exc,
            )  # fmt: skip
            return
        except (IllegalStateError, KafkaError) as exc:
            # The done prefix stays; the next commit sends it again.
            log.warning("offset commit failed (%r); it is made again", exc)
            return
        for tp, meta in offsets.items():
            states[tp].committed_to(meta.offset)

    async def _commit(
        self, only: Iterable[TopicPartition] | None = None, *, timeout: float | None = None
    ) -> None:
        """Commit the done prefix of ``only`` (default: every partition) and wait for it,
        after the commit in flight if there is one; stop waiting after ``timeout``
        (default ``commit_timeout_s``). A commit not waited for goes on in flight."""
        tps = None if only is None else list(only)
        if timeout is None:
            timeout = self.settings.commit_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            task, started = self._begin_commit(tps)
            remaining = deadline - time.monotonic()
            if task is None:
                return
            if remaining <= 0:
                log.warning("offset commit still in flight after %.1fs; not waited for", timeout)
                return
            done, _ = await asyncio.wait({task}, timeout=remaining)
            if not done:
                log.warning("offset commit still in flight after %.1fs; not waited for", timeout)
                return
            if started:
                return

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Set ``ktb_consumer_lag``: records from the committed offset to the partition's end.

        Refreshed on every commit tick, so lag that grows while nothing commits (a
        paused partition, a stuck key) shows. Before a partition's first commit the
        oldest record not done stands in for the committed offset.
        """
        for tp, state in self.partitions.items():
            highwater = consumer.highwater(tp)
            base = state.committed if state.committed >= 0 else state.oldest_not_committed()
            if highwater is None or base is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - base)
            )

    async def _drain(self, partitions: Iterable[TopicPartition], timeout: float) -> None:
        """Stop the work of ``partitions`` within ``timeout`` seconds.

        They start no more records and keys waiting in backoff give up at once; the
        action in flight per key may finish until shortly before the deadline, then
        it is cancelled. Whatever is not done stays so, and is redelivered.
        """
        states = [self.partitions[tp] for tp in partitions if tp in self.partitions]
        deadline = time.monotonic() + max(timeout, 0.0)
        grace = min(CANCEL_GRACE_S, max(timeout, 0.0) / 4)
        for state in states:
            state.close()
        tasks = {t for state in states for t in state.tasks}
        if tasks:
            await asyncio.wait(tasks, timeout=max(deadline - grace - time.monotonic(), 0.0))
        pending = {t for t in tasks if not t.done()}
        if not pending:
            return
        for task in pending:
            task.cancel()
        log.warning("abandoned %d in-flight keys; their records will be redelivered", len(pending))
        _, stuck = await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), grace))
        if stuck:
            # Something below the engine ignores cancellation; the task holds its slot
            # until it ends, and its records, not done, are redelivered.
            log.error("%d key tasks still running after cancellation; left behind", len(stuck))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Give up revoked partitions within ``revoke_timeout_s``: abandon waiting work,
        let in-flight actions finish, commit the done prefix, forget them."""
        mine = [tp for tp in revoked if tp in self.partitions]
        if not mine:
            return
        s = self.settings
        deadline = time.monotonic() + s.revoke_timeout_s
        reserve = min(s.commit_timeout_s, s.revoke_timeout_s / 4)
        try:
            await self._drain(mine, s.revoke_timeout_s - reserve)
            await self._commit(mine, timeout=deadline - time.monotonic())
        finally:
            for tp in mine:
                state = self.partitions.pop(tp)
                self.buffered -= state.outstanding()
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions (a new generation of the group)."""
        self._generation_ended = False
        self.metrics.rebalances.inc()
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
