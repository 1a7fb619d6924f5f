"""What a replay reads: the request, its range bounds, and the plan of offsets they resolve to.

Ranges are ``[from, to)`` per partition, by offset or ISO-8601 time; they are
resolved to offsets once (``resolve_plan``), so a resumed replay reads exactly
the same records.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge import kafka
from bridge.envelope import TENANT, RecordLike, ce_attribute
from bridge.errors import InvalidRequestError, ReplayError
from bridge.kafka import stop_consumer
from bridge.kafka.topics import topic_partitions
from bridge.settings import Settings

NOW = "now"
EARLIEST = "earliest"


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
