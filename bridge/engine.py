"""The per-key engine under live consumption and replay: one copy of the delivery rules.

- Records of one key (within a partition) are acted on in offset order; other keys
  run concurrently, at most ``max_in_flight`` at once. A task exists only for a key
  being acted on, so a full buffer of distinct keys holds records, not parked tasks.
- Every partition keeps its done prefix (``PartitionState``): the offsets below it are
  acted on, dead-lettered or passed over, and nothing above a record not done is.
- A record is retried until it is done: transient errors (and a dead-letter write
  that fails) with capped, jittered exponential backoff, telling the owner the
  partition is failing (the live consumer pauses fetching it); an unexpected error
  that persists for ``MAX_UNEXPECTED_ATTEMPTS`` tries dead-letters the record as
  ``internal_error``. Live and replay behave the same way on it.
- The routes' failure policies (``bridge.policies``) act here, where a record is
  acted on or dead-lettered: a blocked key's later records are parked, a release
  (a redriven or discarded letter) runs in the key's own line so its later records
  wait behind it, and a ``pause`` holds the partition at the record until an
  operator decides.
- Only a partition closing (revoke, shutdown, the end of a replay) ends a key's work
  early; its records then stay not done and are read again by whoever reads next.
  A cancellation goes on even when a library below turned it into an error or a
  result, and a drain is bounded whatever the tasks do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from aiokafka import TopicPartition

from bridge.backoff import Backoff
from bridge.dispatch import Result
from bridge.envelope import RecordLike
from bridge.errors import (
    Abandoned,
    BridgeError,
    InternalError,
    PauseRequested,
    PermanentError,
    TransientError,
)
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.policies import Block, Decision, Entry, FailurePolicies, PartitionPolicies, Pause

log = logging.getLogger("ktb.engine")

MAX_UNEXPECTED_ATTEMPTS = 5
CANCEL_GRACE_S = 1.0
"""How long cancelled key tasks get to end before a drain goes on without them."""

NOT_DONE: Literal[False] = False


@dataclass
class PartitionState:
    """One partition being read: offsets taken, in order, each not done yet (``False``),
    done with its ``Result``, or passed over without acting (``None``); the done prefix
    and how far a commit has confirmed it."""

    pending: dict[int, Result | Literal[False] | None] = field(default_factory=dict)
    keys: dict[bytes, deque[Item]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    done_to: int = -1
    """The end of the done prefix (the offset to commit); kept until a commit reaches it."""
    committed: int = -1
    """The highest offset a commit has confirmed."""
    fetched_to: int = -1
    """One past the highest offset taken; a record below it was taken already."""
    failing: int = 0
    """Keys of this partition retrying after a failure."""
    closing: bool = False
    """Set when the partition is revoked, the bridge stops or a replay ends: start nothing."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set with ``closing``; wakes keys waiting in backoff so they give up at once."""
    policies: PartitionPolicies = field(default_factory=PartitionPolicies)
    """Blocked keys and the pause of the failure policies (``bridge.policies``)."""

    def take(self, offset: int) -> bool:
        """Track a record read; False if it was taken already (read again after a seek)."""
        if offset < self.fetched_to:
            return False
        self.pending[offset] = NOT_DONE
        self.fetched_to = offset + 1
        return True

    def done(self, offset: int, result: Result | None = None) -> None:
        """Mark a record acted on or dead-lettered (``result``), or passed over (``None``)."""
        self.pending[offset] = result

    def passed(self, position: int) -> None:
        """The reader's position, read while every record taken is done.

        Offsets below it that were never delivered (a transaction's commit marker,
        records of an aborted transaction) count as done, so an idle partition
        commits up to its end offset rather than one short of it.
        """
        if position > self.fetched_to and self.all_done():
            self.pending[position - 1] = None
            self.fetched_to = position

    def advance(self) -> list[Result]:
        """Fold the leading done offsets into ``done_to``; return their results in order."""
        results: list[Result] = []
        pending = self.pending
        while pending:
            first = next(iter(pending))
            value = pending[first]
            if value is NOT_DONE:
                break
            del pending[first]
            self.done_to = first + 1
            if value is not None:
                results.append(value)
        return results

    def commit_point(self) -> int | None:
        """The offset to commit, if the done prefix is past the last confirmed commit.

        ``done_to`` stays until a commit reaches it: a commit that fails is made again
        from the same point.
        """
        self.advance()
        return self.done_to if self.done_to > self.committed else None

    def committed_to(self, offset: int) -> None:
        """Record a successful commit of ``offset``; the committed offset never decreases."""
        self.committed = max(self.committed, offset)

    def oldest_not_committed(self) -> int | None:
        """The first offset read and not known to be committed, if any."""
        if self.done_to >= 0:
            return self.done_to
        return next(iter(self.pending), None)

    def all_done(self) -> bool:
        """Whether every record taken is done."""
        return all(value is not NOT_DONE for value in self.pending.values())

    def outstanding(self) -> int:
        """Records taken and not done."""
        return sum(1 for value in self.pending.values() if value is NOT_DONE)

    def close(self) -> None:
        """Start no more of this partition's records; wake keys waiting in backoff."""
        self.closing = True
        self.closed.set()


@dataclass(frozen=True)
class KeyRelease:
    """In a key's line: release the records ``block`` holds parked (its letter was
    discarded) before the key's next record."""

    block: Block


Item = RecordLike | KeyRelease


def _raise_if_cancelling() -> None:
    """Go on with a cancellation that a library turned into an error or a result."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


Ready = tuple[TopicPartition, PartitionState, bytes | None, deque[Item]]
FailingHook = Callable[[TopicPartition, PartitionState], None]
DoneHook = Callable[[TopicPartition, PartitionState], None]


class Engine:
    """Acts on records through an ``Ingress``, per key in order; the owner reads them.

    ``on_failing(tp, state)`` is called whenever ``state.failing`` changes (the live
    consumer pauses or resumes fetching); ``on_done(tp, state)`` after each record is
    done (a replay counts and reports progress). ``policies`` apply the routes'
    ``on_failure`` (``bridge.policies``) where a record is acted on and dead-lettered.
    """

    def __init__(
        self,
        ingress: Ingress,
        *,
        max_in_flight: int,
        retry_initial_s: float,
        retry_max_s: float,
        metrics: Metrics | None = None,
        on_failing: FailingHook | None = None,
        on_done: DoneHook | None = None,
        policies: FailurePolicies | None = None,
    ) -> None:
        self.ingress = ingress
        self.max_in_flight = max_in_flight
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.metrics = metrics or ingress.metrics
        self.on_failing = on_failing
        self.on_done = on_done
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.buffered = 0
        """Records taken and not done, over the partitions held."""
        self.processed = 0
        """Records done since the engine started."""
        self._ready: deque[Ready] = deque()
        self._running = 0
        self._progress = asyncio.Event()
        self.policies = policies
        if policies is not None:
            policies.partitions = self.partitions

    # --- partitions ------------------------------------------------------------------

    def assign(self, tp: TopicPartition) -> PartitionState:
        """Start holding ``tp`` (a partition already held keeps its state)."""
        return self.partitions.setdefault(tp, PartitionState())

    def release(self, tp: TopicPartition) -> PartitionState | None:
        """Stop holding ``tp``; its records not done no longer count as buffered (a
        ``wait_for_room`` sees the room at once)."""
        state = self.partitions.pop(tp, None)
        if state is not None:
            self.buffered -= state.outstanding()
            self._progress.set()
        if self.policies is not None:
            self.policies.forget(tp)
        return state

    def holds(self, tp: TopicPartition, state: PartitionState) -> bool:
        """Whether ``state`` is still the state held for ``tp``."""
        return self.partitions.get(tp) is state

    # --- failure policies ---------------------------------------------------------------

    def load_policies(self, tp: TopicPartition) -> None:
        """Take ``tp``'s blocked keys from the parking state (read to its end by the
        caller, before any record of ``tp`` is submitted); a release already due goes
        first in its key's line."""
        state = self.partitions.get(tp)
        if state is None or self.policies is None:
            return
        for block in self.policies.load(tp, state):
            self.release_key(tp, block)

    def release_key(self, tp: TopicPartition, block: Block) -> None:
        """Queue the release of ``block``'s parked records behind its key's records."""
        state = self.partitions.get(tp)
        if state is None or state.closing:
            return
        queue = state.keys.get(block.key)
        if queue is not None:
            queue.append(KeyRelease(block))
            return
        queue = deque([KeyRelease(block)])
        state.keys[block.key] = queue
        self._ready.append((tp, state, block.key, queue))
        self._start_ready()

    def on_parking(self, name: str, entry: Entry | None) -> None:
        """An entry of the parking state arrived: a discard releases a key of a partition
        held here, an operator's decision ends a pause here."""
        if self.policies is None or not isinstance(entry, Block | Pause):
            return
        tp = TopicPartition(entry.topic, entry.partition)
        state = self.partitions.get(tp)
        if state is None or state.closing:
            return
        if isinstance(entry, Block):
            if entry.discarded and self.policies.discarded(tp, state, entry):
                self.release_key(tp, entry)
        else:
            self.policies.decided(tp, state, entry)

    # --- records ---------------------------------------------------------------------

    def submit(self, tp: TopicPartition, record: RecordLike) -> bool:
        """Queue ``record`` behind the earlier records of its key; False if not taken
        (its partition is not held or is closing, or it was taken already)."""
        state = self.partitions.get(tp)
        if state is None or state.closing or not state.take(record.offset):
            return False
        self.buffered += 1
        key = record.key
        if key is not None and key in state.keys:
            state.keys[key].append(record)
            return True
        queue: deque[Item] = deque([record])
        if key is not None:
            state.keys[key] = queue
        self._ready.append((tp, state, key, queue))
        self._start_ready()
        return True

    def pass_over(self, tp: TopicPartition, offset: int) -> None:
        """Take ``offset`` as done without acting on it (outside a replay's selection)."""
        state = self.partitions.get(tp)
        if state is not None and state.take(offset):
            state.done(offset, None)
            self._record_done(tp, state)

    async def wait_for_room(self, limit: int) -> None:
        """Until fewer than ``limit`` records are buffered."""
        while self.buffered >= limit:
            self._progress.clear()
            await self._progress.wait()

    async def idle(self, timeout: float | None = None) -> bool:
        """Until no key has work left (or ``timeout``); whether it is idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._ready or self._running:
            self._progress.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
        return True

    def _start_ready(self) -> None:
        """Give waiting keys a task, oldest first, while fewer than ``max_in_flight`` run."""
        while self._ready and self._running < self.max_in_flight:
            tp, state, key, queue = self._ready.popleft()
            if state.closing or not self.holds(tp, state):
                continue  # abandoned: its records are not done and will be read again
            self._running += 1
            task = asyncio.create_task(self._drain_key(tp, state, key, queue))
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)

    def _record_done(self, tp: TopicPartition, state: PartitionState) -> None:
        if self.on_done is not None:
            self.on_done(tp, state)
        self._progress.set()

    async def _drain_key(
        self,
        tp: TopicPartition,
        state: PartitionState,
        key: bytes | None,
        queue: deque[Item],
    ) -> None:
        """Act on a key's records in order until none is left, its turn ends or its
        partition closes. The key keeps its queue while records remain in it, so a
        later record of the key never overtakes an earlier one."""
        requeued = False
        try:
            while queue and not state.closing:
                record = queue[0]
                if isinstance(record, KeyRelease):
                    if not await self._release(tp, state, record):
                        break  # the partition closed: its next owner releases the key
                    queue.popleft()
                    continue
                if not await self._while_paused(state):
                    break
                result = await self._process(tp, state, record)
                if result is None:
                    break  # the partition closed: this record and the rest stay not done
                state.done(record.offset, result)
                if self.holds(tp, state):
                    self.buffered -= 1  # else releasing it took the partition's count
                self.processed += 1
                queue.popleft()
                self._record_done(tp, state)
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
            if queue and not state.closing and self.holds(tp, state):
                self._ready.append((tp, state, key, queue))
                requeued = True
        finally:
            self._running -= 1
            if not requeued and not queue and key is not None and state.keys.get(key) is queue:
                del state.keys[key]
            self._start_ready()
            self._progress.set()

    async def _while_paused(self, state: PartitionState) -> bool:
        """Wait while the partition is paused at another record; False if it closes."""
        running = state.policies.running
        if not running.is_set() and not state.closing:
            closed = asyncio.ensure_future(state.closed.wait())
            resumed = asyncio.ensure_future(running.wait())
            try:
                await asyncio.wait({closed, resumed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                resumed.cancel()
        return not state.closing

    async def _release(self, tp: TopicPartition, state: PartitionState, item: KeyRelease) -> bool:
        """Release a discarded letter's parked records, retried with backoff until it is
        done; False if the partition closes first."""
        assert self.policies is not None
        backoff = Backoff(self.retry_initial_s, self.retry_max_s, jitter=True)
        while not state.closing:
            block = state.policies.blocks.get(item.block.key)
            if (
                block is None
                or block.letter != item.block.letter
                or not block.discarded
                or block.released
            ):
                return True  # released already, or blocked by another letter since
            try:
                return await self.policies.release(tp, state, block, self._process) is not None
            except TransientError as exc:
                log.warning("releasing a key of %s[%d] failed: %s", tp.topic, tp.partition, exc)
            except Exception:
                log.exception("releasing a key of %s[%d] failed", tp.topic, tp.partition)
            _raise_if_cancelling()
            await self._backoff(state, backoff.next())
        return False

    async def _act(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike
    ) -> Result | None:
        if self.policies is None:
            return await self.ingress.handle(record, state.closed)
        return await self.policies.act(tp, state, record, self._process)

    async def _letter(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike, letter: PermanentError,
        skipped: bool,
    ) -> Result:  # fmt: skip
        if self.policies is None or skipped:
            return await self.ingress.dead_letter(record, letter)
        return await self.policies.dead_letter(tp, state, record, letter)

    async def _process(
        self, tp: TopicPartition, state: PartitionState, record: RecordLike
    ) -> Result | None:
        """Act on ``record`` until it is done (its result) or its partition closes (None).

        Transient errors and failing dead-letter writes are retried with backoff while
        the partition counts as failing; an unexpected error that persists for
        ``MAX_UNEXPECTED_ATTEMPTS`` tries dead-letters the record. A cancellation goes
        on even when a library below turned it into an error or a result.
        """
        backoff = Backoff(self.retry_initial_s, self.retry_max_s, jitter=True)
        unexpected = 0
        letter: PermanentError | None = None
        skipped = False
        failing = False
        paused = False
        try:
            while not state.closing:
                try:
                    if letter is None:
                        result = await self._act(tp, state, record)
                    else:
                        result = await self._letter(tp, state, record, letter, skipped)
                    _raise_if_cancelling()
                    return result
                except PauseRequested as exc:
                    _raise_if_cancelling()
                    if self.policies is None or not self.policies.live:
                        letter, skipped = exc.error, self.policies is None
                        continue  # nobody resumes a replay: it dead-letters and parks
                    self._failing(tp, state, +1)
                    paused = True
                    try:
                        decision = await self.policies.pause(tp, state, record, exc)
                    finally:
                        self._failing(tp, state, -1)
                    if decision is None:
                        return None
                    if decision is Decision.SKIP:
                        letter, skipped = exc.error, True
                    else:
                        letter, unexpected = None, 0
                    continue
                except Abandoned:
                    return None  # closed while waiting for a token or a slot in Temporal
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
                    self._failing(tp, state, +1)
                self.metrics.transient_retries.labels(tp.topic).inc()
                delay = backoff.next()
                log.debug(
                    "retrying %s[%d]@%d in %.1fs: %s",
                    tp.topic, tp.partition, record.offset, delay, reason,
                )  # fmt: skip
                await self._backoff(state, delay)
            return None
        finally:
            if failing:
                self._failing(tp, state, -1)
            if paused:
                state.policies.running.set()  # the record is done: the partition goes on

    def _failing(self, tp: TopicPartition, state: PartitionState, delta: int) -> None:
        state.failing += delta
        if delta < 0 and state.failing == 0:
            log.info("resuming %s[%d]", tp.topic, tp.partition)
        if self.on_failing is not None and self.holds(tp, state):
            self.on_failing(tp, state)

    @staticmethod
    async def _backoff(state: PartitionState, delay: float) -> None:
        """Sleep ``delay`` seconds, or until the partition closes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await state.closed.wait()

    # --- stopping ----------------------------------------------------------------------

    async def drain(self, partitions: Iterable[TopicPartition], timeout: float) -> None:
        """Stop the work of ``partitions`` within ``timeout`` seconds.

        They start no more records and keys waiting in backoff give up at once; the
        action in flight per key may finish until shortly before the deadline, then
        it is cancelled. Whatever is not done stays so, and is read again.
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
        log.warning("abandoned %d in-flight keys; their records will be read again", len(pending))
        _, stuck = await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), grace))
        if stuck:
            # Something below the engine ignores cancellation; the task holds its slot
            # until it ends, and its records, not done, are read again.
            log.error("%d key tasks still running after cancellation; left behind", len(stuck))
