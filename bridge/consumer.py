"""The live bridge: a member of the consumer group over the per-key engine.

The engine (``bridge.engine``) keeps per-key order, the done prefix and retries;
this module adds what only live consumption has:

- Group membership: partitions assigned and revoked by the group, a rebalance
  budget, optional static membership.
- Commits of the done prefix: kept until a commit succeeds, one commit in flight at
  a time, so a failed commit is made again and committed offsets never go back;
  nothing is sent for a generation that has ended. An idle partition commits the
  consumer's position, past a transaction's commit marker.
- Flow control: a partition whose keys are retrying is paused; at most
  ``max_buffered`` records are held. While they are, nothing more is taken: what the
  client has fetched waits in it, at most one fetch a partition
  (``fetch_partition_bytes``), and the loop still polls the client without taking
  anything (``NOTHING``), so its group's errors surface and it counts as consuming.
  Pausing every partition instead would cost a fetch: the client drops a paused
  partition's fetched records, and fetches them again once it resumes.
- The rebalance budget: the group waits ``rebalance_timeout_s`` for a member to
  rejoin. On revoke, revoked partitions start nothing more and keys waiting in
  backoff are abandoned at once; the action in flight per key may finish within
  ``revoke_timeout_s``, then the done prefix is committed. Settings keep the revoke
  well inside the rebalance timeout, so a slow Temporal never gets a member expelled.
- Failure policies (``bridge.policies``): with ``parking``, a newly assigned
  partition is processed only once ``ktb.parking`` has been read to its end, so
  its blocked keys hold on every member; the state is followed while consuming,
  which is how discards and resumes reach the member holding the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from bridge import kafka
from bridge.concurrency import ActionLimit
from bridge.engine import Engine, PartitionState
from bridge.errors import TransientError
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.policies import FailurePolicies, ParkingState
from bridge.settings import Settings

log = logging.getLogger("ktb.consumer")

NOTHING = TopicPartition("", -1)
"""A partition no member is assigned: the client's ``getmany`` over it alone returns no
records and drops none that it holds for the others, yet raises the group's errors and
counts as a poll (a member that does not poll for ``max_poll_interval_ms`` leaves)."""
POLL_S = 0.1
"""Longest wait for records (or, while full, for room) before the loop looks again at
its commits and at whether it is stopping."""


class BridgeConsumer:
    """Runs one member of the bridge's consumer group."""

    def __init__(
        self,
        settings: Settings,
        ingress: Ingress,
        topics: Iterable[str],
        metrics: Metrics | None = None,
        policies: FailurePolicies | None = None,
        limit: ActionLimit | None = None,
    ) -> None:
        self.settings = settings
        self.ingress = ingress
        self.limit = limit
        """The gate of actions in Temporal, told which share of the group's partitions
        this member reads (``ActionLimit.set_share``)."""
        self.topics = sorted(set(topics))
        self.metrics = metrics or ingress.metrics
        self.parking: ParkingState | None = policies.state if policies is not None else None
        self.engine = Engine(
            ingress,
            max_in_flight=settings.max_in_flight,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            metrics=self.metrics,
            on_failing=self._on_failing,
            policies=policies,
        )
        self._stopping = asyncio.Event()
        self._commit_task: asyncio.Task[None] | None = None
        # Set when a commit is refused because this member's generation has ended;
        # nothing is committed again before the group assigns partitions anew.
        self._generation_ended = False
        self._loading: set[TopicPartition] = set()
        """Assigned partitions whose blocked keys are being read: not fetched meanwhile."""
        self.consumer: AIOKafkaConsumer | None = None

    @property
    def partitions(self) -> dict[TopicPartition, PartitionState]:
        """The partitions this member holds, with their engine state."""
        return self.engine.partitions

    @property
    def buffered(self) -> int:
        """Records fetched and not done."""
        return self.engine.buffered

    @property
    def processed(self) -> int:
        """Records acted on or dead-lettered since the bridge started."""
        return self.engine.processed

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
            if self.parking is not None:
                self.parking.follow(self.engine.on_parking)
            consumer.subscribe(self.topics, listener=_Listener(self))
            await self._loop(consumer)
            deadline = time.monotonic() + s.shutdown_timeout_s
            await self.engine.drain(list(self.partitions), s.shutdown_timeout_s - 2 * reserve)
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
            if await self._room(consumer):
                room = self.settings.max_buffered - self.buffered
                batch = await consumer.getmany(
                    timeout_ms=round(POLL_S * 1000), max_records=min(room, 2000)
                )
                for tp, records in batch.items():
                    # A revoked partition takes nothing: its next owner fetches these.
                    taken = sum(self.engine.submit(tp, record) for record in records)
                    self.metrics.events_consumed.labels(tp.topic).inc(taken)
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
            if state.closing or not state.all_done():
                continue
            try:
                state.passed(await consumer.position(tp))
            except (IllegalStateError, KafkaError):
                continue  # revoked meanwhile, or no position yet: the next tick tries

    async def _room(self, consumer: AIOKafkaConsumer) -> bool:
        """Whether the buffer takes records now. While it is full, wait up to ``POLL_S``
        for a record to be done, and poll the client for ``NOTHING`` if none was (module
        doc): taking records is a poll too."""
        limit = self.settings.max_buffered
        if self.buffered < limit:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_S):
                await self.engine.wait_for_room(limit)
        if self.buffered < limit:
            return True
        await consumer.getmany(NOTHING, timeout_ms=0)
        return False

    def _on_failing(self, tp: TopicPartition, state: PartitionState) -> None:
        """A partition's keys started or stopped retrying: pause or resume fetching it."""
        consumer = self.consumer
        if consumer is None:
            return
        with contextlib.suppress(IllegalStateError):
            if state.failing > 0:
                consumer.pause(tp)
            elif tp not in self._loading:
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
            await self.engine.drain(mine, s.revoke_timeout_s - reserve)
            await self._commit(mine, timeout=deadline - time.monotonic())
        finally:
            for tp in mine:
                self._loading.discard(tp)
                self.engine.release(tp)
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def load_policies(self, assigned: set[TopicPartition]) -> None:
        """Read the parking state to its end, then take the assigned partitions' blocks:
        before any of their records is fetched."""
        if self.parking is None:
            return
        while not self._stopping.is_set():
            try:
                await self.parking.read_to_end()
                break
            except TransientError as exc:
                log.warning("reading the parking state failed (%s); trying again", exc.message)
                await asyncio.sleep(self.settings.retry_max_s)
        for tp in assigned:
            self.engine.load_policies(tp)
        self._loading -= assigned
        consumer = self.consumer
        if consumer is not None:
            with contextlib.suppress(IllegalStateError):
                consumer.resume(
                    *[
                        tp
                        for tp in assigned
                        if tp in self.partitions and not self.partitions[tp].failing
                    ]
                )

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions (a new generation of the group)."""
        self._generation_ended = False
        self.metrics.rebalances.inc()
        for tp in assigned:
            self.engine.assign(tp)
        consumer = self.consumer
        if self.limit is not None and consumer is not None:
            total = sum(len(consumer.partitions_for_topic(t) or ()) for t in self.topics)
            self.limit.set_share(len(self.partitions), total)
        if consumer is not None and self.parking is not None:
            # With failure policies, nothing is fetched before the blocks are read
            # (``load_policies``): a record of a blocked key must not be acted on.
            consumer.pause(*assigned)
        if self.parking is not None:
            self._loading |= assigned


class _Listener(ConsumerRebalanceListener):
    def __init__(self, bridge: BridgeConsumer) -> None:
        self.bridge = bridge

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.bridge.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.bridge.on_assigned(set(assigned))
        await self.bridge.load_policies(set(assigned))
