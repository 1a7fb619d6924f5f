"""What every benchmark scenario shares: the run context, results, statistics, load helpers.

A scenario is a module with ``NAME`` and ``async def run(ctx: BenchContext) ->
ScenarioResult``. It measures its baseline in the same run, next to the bridge,
because absolute numbers on a small shared machine are noisy; ratios are not.
Nothing here is a pass/fail test: targets are reported as met or missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from temporalio.client import Client

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.dev.stack import LocalStack
from bridge.dispatch import Outcome
from bridge.envelope import Event, KafkaRecord, encode_event
from bridge.kafka import ensure_topics
from bridge.kafka.topics import consumer_lag, partition_lags
from bridge.pacing import TokenBucket
from bridge.provenance import EventProvenance, parse_record
from bridge.routes import Action
from bridge.settings import Settings
from bridge.temporal.client import connect_temporal
from bridge.temporal.requests import start_call

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
T = TypeVar("T")


@dataclass
class BenchContext:
    """One benchmark run: where Kafka and Temporal are, its size, and earlier results."""

    settings: Settings
    catalog: SchemaCatalog
    client: Client
    quick: bool
    work_dir: Path
    machine: dict[str, Any]
    results: dict[str, ScenarioResult] = field(default_factory=dict)
    stack: LocalStack | None = None
    """The run's own Kafka and Temporal processes (``None`` when it uses running ones)."""
    rounds_wanted: int | None = None
    """Rounds for the scenarios that run rounds (``--rounds``); ``None``: their own."""
    retried_calls: int = 0
    """Direct start calls tried again after a transient error, over the run
    (``bench.throughput.start_with_retries``); each scenario reports its own."""

    def uid(self) -> str:
        """A short unique suffix for topics, task queues, groups and workflow ids."""
        return uuid.uuid4().hex[:8]

    def size(self, quick: T, full: T) -> T:
        """The scenario size for this run."""
        return quick if self.quick else full

    def rounds(self, quick: int, full: int) -> int:
        """How many rounds a scenario that runs rounds runs: ``--rounds`` when given
        (more rounds, a firmer mean), else its own count for this run's size."""
        return self.rounds_wanted or self.size(quick, full)

    async def renew_server(self) -> bool:
        """Restart the run's own in-memory Temporal server on its port (it comes back
        empty) and connect to it again; ``False``, and nothing done, when the run uses a
        server it did not start."""
        temporal = self.stack.temporal if self.stack is not None else None
        if temporal is None:
            return False
        await temporal.restart()
        self.client = await connect_temporal(self.settings)
        return True

    async def renew_before_round(self, n: int) -> bool:
        """Whether round ``n`` (from 0) of the throughput or scale scenario begins on a
        fresh server: every ``SERVER_ROUNDS`` rounds after the first, when the run has a
        server of its own (``renew_server``, done here)."""
        return n > 0 and n % SERVER_ROUNDS == 0 and await self.renew_server()


SERVER_ROUNDS = 2
"""Rounds of the throughput or scale scenario one in-memory server takes, as a full run
runs them (about 40,000 and 54,000 workflows). More rounds (``--rounds``) run on a fresh
server from each further multiple of this on (``BenchContext.renew_server``): the dev
server slows as workflows pile up (five throughput rounds on one server, about 94,000
workflows: raw rounds of 176, 167 and 151 /s in the first, 168, 141 and 106 /s in the
fifth), so later rounds would measure a server no full run meets. The latency scenario,
on the server throughput leaves, then meets the server of throughput's last rounds."""


def renewed_note(renewed: Sequence[int]) -> list[str]:
    """The note naming the rounds (from 1) that began on a fresh server, if any."""
    if not renewed:
        return []
    return [
        f"a fresh in-memory server before round(s) {', '.join(str(n) for n in renewed)}"
        f" (one server takes {SERVER_ROUNDS} rounds), its own raw round first"
    ]


@dataclass(frozen=True)
class Row:
    """One line of the table: the bridge's figure beside its baseline and target."""

    measure: str
    bridge: str
    baseline: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class ScenarioResult:
    """What one scenario measured: numbers for the JSON file, rows for the table."""

    name: str
    metrics: dict[str, Any]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- statistics -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def span_rate(times: Iterable[float]) -> float:
    """Events per second between the first and the last of ``times`` (seconds)."""
    ordered = sorted(times)
    if len(ordered) < 2 or ordered[-1] <= ordered[0]:
        return math.nan
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def provenance_topic(uid: str) -> str:
    """The provenance topic of a benchmark part's own (``KTB_PROVENANCE_TOPIC``)."""
    return f"ktb.provenance-bench-{uid}"


async def last_answer(settings: Settings, topic: str, count: int) -> float:
    """When the last of ``count`` workflow starts a bridge made was answered
    (``time.time()`` seconds): the latest ``at`` of the ``started`` provenance items on
    ``topic`` (the round's own provenance topic), which a bridge stamps as Temporal's
    answer comes back. Read once the round is over, so the bridge does no work for the
    benchmark while it runs; ``RuntimeError`` if fewer than ``count`` are there."""
    consumer = kafka.consumer(settings, topic, auto_offset_reset="earliest")
    await kafka.start(consumer, settings)
    seen, latest = 0, 0.0
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic} not read to its end in 60 s")
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for record in (r for records in batch.values() for r in records):
                for item in parse_record(record.value or b""):
                    if isinstance(item, EventProvenance) and item.outcome == Outcome.STARTED:
                        seen += 1
                        latest = max(latest, datetime.fromisoformat(item.at).timestamp())
    finally:
        await kafka.stop_consumer(consumer)
    if seen < count:
        raise RuntimeError(f"{seen} of {count} starts in the provenance on {topic}")
    return latest


def answered_rate(starts: Iterable[float], answered: float) -> float:
    """Starts per second of a round: how many there are in ``starts`` (the times Temporal
    recorded) over the span from the first of them to ``answered``, when the last call
    was answered (the raw callers' clock; a bridge's provenance, ``last_answer``).

    Not the span of the start times alone (``span_rate``): Temporal stamps a start time
    as the request arrives (25-38 ms after it was sent, on this machine) and answers the
    call once the start is persisted (1.0-1.4 s later with 256 calls at once on the
    in-memory server). The start times are the arrivals, so a caller that sends its first
    C calls at once makes their span shorter than the work by the time the server takes
    for C starts: N starts at a steady rate show N / (N - C) times that rate (1.09 for
    3,000 at 256 calls at once), and a caller that cuts its calls back (the adaptive
    limit taking a probe back) pays that time again as arrivals stop while the calls
    in Temporal are answered.
    """
    times = list(starts)
    first = min(times, default=math.inf)
    if answered <= first:
        return math.nan
    return len(times) / (answered - first)


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``, ``nan`` when the baseline is missing or zero."""
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


def fmt(value: float, unit: str = "", digits: int = 0) -> str:
    """A number for the table (thousands separated)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (all its threads)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def stack_pids(ctx: BenchContext) -> dict[str, int]:
    """The run's own Temporal and Kafka processes by name (none when it uses running ones)."""
    names = {"temporal": "Temporal", "kafka": "Kafka"}
    services = ctx.stack.services() if ctx.stack is not None else []
    return {
        names[svc.name]: svc.proc.pid
        for svc in services
        if svc.name in names and svc.proc is not None and svc.alive()
    }


async def cores_used(pids: Mapping[str, int], work: Awaitable[T]) -> tuple[T, dict[str, float]]:
    """``work``'s result, and the cores each of ``pids`` used on average while it ran
    (CPU seconds over wall seconds; a process gone meanwhile is left out)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = await work
    elapsed = max(time.monotonic() - started, 1e-9)
    cores = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            cores[name] = round((cpu_seconds(pid) - before[name]) / elapsed, 3)
    return result, cores


def mean_cores(
    parts: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None
) -> dict[str, float]:
    """The cores each process used on average over ``parts`` of a round (``cores_used`` of
    each), each weighted by its length in ``weights`` (default: equally long); a process
    absent from a part counts 0 there."""
    if weights is None:
        weights = [1.0] * len(parts)
    if len(weights) != len(parts):
        raise ValueError(f"{len(parts)} parts but {len(weights)} weights")
    total = sum(weights)
    names = sorted({name for part in parts for name in part})
    weighted = list(zip(parts, weights, strict=True))
    return {
        name: round(sum(part.get(name, 0.0) * w for part, w in weighted) / total, 3)
        for name in names
    }


def stack_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a benchmark's child process: this process's, pointed at the
    run's Kafka and Temporal (``settings``), with ``extra`` on top."""
    return {
        **os.environ,
        "KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KTB_TEMPORAL_ADDRESS": settings.temporal_address,
        **extra,
    }


def cores_line(cores: dict[str, float]) -> str:
    """``Temporal 0.85, Kafka 0.03, ...`` (process by process, as measured)."""
    return ", ".join(f"{name} {value:.2f}" for name, value in cores.items()) or "not measured"


SPIN = """
import sys, time
share = float(sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
while True:
    behind = share * (time.perf_counter() - wall) - (time.process_time() - cpu)
    if behind > 0:
        end = time.process_time() + min(behind, 0.005)
        while time.process_time() < end:
            pass
    else:
        time.sleep(min(-behind / share, 0.01))
"""
"""A process that takes ``share`` (0-1) of a core: it spins while its CPU time is behind
that share of the time it has run, catching up on what the scheduler held back, and
sleeps while ahead."""


@contextlib.asynccontextmanager
async def cpu_load(cores: float) -> AsyncIterator[dict[str, int]]:
    """While the body runs, processes that spin for ``cores`` of CPU between them (two at
    least, none above 0.9 of a core); yields their pids by name, none for ``cores`` ~0."""
    count = max(2, math.ceil(cores / 0.9)) if cores >= 0.02 else 0
    spinners = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", SPIN, f"{cores / count:.3f}")
        for _ in range(count)
    ]
    try:
        yield {f"load {n + 1}": spinner.pid for n, spinner in enumerate(spinners)}
    finally:
        for spinner in spinners:
            with contextlib.suppress(ProcessLookupError):
                spinner.kill()
            await spinner.wait()


def rounded(value: float, digits: int = 1) -> float | None:
    """A JSON-friendly number (``None`` instead of ``nan``)."""
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def timestamp(dt: datetime | None) -> float:
    """A timezone-aware datetime as seconds since the epoch (``nan`` if missing)."""
    return dt.timestamp() if dt is not None else math.nan


# --- events and topics --------------------------------------------------------------


def order_placed(order_id: str, currency: str = "EUR", total: int = 2500) -> dict[str, Any]:
    """A valid ``com.example.order.placed`` payload of the example domain."""
    return {
        "order_id": order_id,
        "customer_id": f"cust-{order_id[-3:]}",
        "items": [
            {"sku": "sku-1", "quantity": 1, "unit_price_cents": total - total // 2},
            {"sku": "sku-2", "quantity": 1, "unit_price_cents": total // 2},
        ],
        "total_cents": total,
        "currency": currency,
        "payment_token": "tok_visa",
    }


def payment_confirmed(order_id: str, seq: int) -> dict[str, Any]:
    """A valid ``com.example.payment.confirmed`` payload."""
    return {"order_id": order_id, "payment_id": f"pay-{order_id}-{seq}", "amount_cents": seq + 1}


def encode(
    catalog: SchemaCatalog, type_name: str, data: Mapping[str, Any], key: str
) -> KafkaRecord:
    """One binary-mode CloudEvent with Avro data, as any producer of the domain sends it."""
    return encode_event(
        catalog, type=type_name, data=data, id=str(uuid.uuid4()), source="bench", key=key
    )


CURRENCIES = ("EUR", "USD", "GBP", "CHF")


def order_id(prefix: str, n: int) -> str:
    """The order id (and record key) of ``order_records(..., prefix, ...)``'s ``n``-th record."""
    return f"{prefix}-{n:06d}"


def order_records(catalog: SchemaCatalog, prefix: str, count: int) -> list[KafkaRecord]:
    """``count`` order.placed records with distinct keys ``<prefix>-<n>``: none waits on another."""
    return [
        encode(
            catalog,
            PLACED,
            order_placed(order_id(prefix, n), CURRENCIES[n % len(CURRENCIES)], 1000 + n % 5000),
            key=order_id(prefix, n),
        )
        for n in range(count)
    ]


async def create_topic(settings: Settings, topic: str, partitions: int = 6) -> None:
    """Create a topic of this run (and its dead-letter topic)."""
    await ensure_topics(settings, {topic: partitions, f"{topic}.dlq": 1})


async def produce_all(
    settings: Settings, topic: str, records: Sequence[KafkaRecord], window: int = 5000
) -> float:
    """Produce ``records`` as fast as the producer takes them; return the seconds it took."""
    producer = kafka.producer(settings, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []
        for record in records:
            pending.append(
                await producer.send(
                    topic, value=record.value, key=record.key, headers=record.headers
                )
            )
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def open_loop(
    producer: AIOKafkaProducer,
    topic: str,
    records: Sequence[KafkaRecord],
    rate: float,
) -> list[float]:
    """Send ``records`` at ``rate`` per second whatever happens downstream.

    Returns each record's send time (``time.time()`` just before it is handed to
    the producer): the sender never waits for the bridge, so a slow bridge shows
    as latency, not as a lower offered rate.
    """
    sent: list[float] = []
    pending: list[asyncio.Future[Any]] = []
    start = time.perf_counter()
    for n, record in enumerate(records):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(time.time())
        pending.append(
            await producer.send(topic, value=record.value, key=record.key, headers=record.headers)
        )
    await asyncio.gather(*pending)
    return sent


def consumer_record(topic: str, offset: int, record: KafkaRecord) -> ConsumerRecord[bytes, bytes]:
    """``record`` as the consumer hands it to the ingress."""
    return ConsumerRecord(
        topic, 0, offset, int(time.time() * 1000), 0, record.key, record.value, None, 0, 0,
        record.headers,
    )  # fmt: skip


def write_routes(path: Path, routes: list[dict[str, Any]], unmatched: str = "skip") -> Path:
    """A routes file for a bridge process of this run."""
    path.write_text(yaml.safe_dump({"routes": routes, "unmatched": unmatched}, sort_keys=False))
    return path


def start_route(topic: str, uid: str) -> dict[str, Any]:
    """The example domain's start route (condition, template, data as the argument)."""
    return {
        "name": f"bench-start-{uid}",
        "topic": topic,
        "type": PLACED,
        "when": "data.total_cents > 0",
        "action": "start",
        "workflow": "BenchOrder",
        "task_queue": route_task_queue(uid),
        "workflow_id": f"{route_task_queue(uid)}-{{data.order_id}}",
        "args": "data",
        "on_duplicate": "ignore",
    }


def start_request(event: Event, action: Action | None) -> dict[str, Any]:
    """The bridge's ``start_workflow`` arguments (``bridge.temporal.requests.start_call``,
    the workflow type under ``workflow``) for ``event`` routed to ``action``, a start
    (``start_route``); raises ``ValueError`` for an event no route took."""
    if action is None:
        raise ValueError(f"no route took event {event.id}")
    return start_call(action, event, Outcome.STARTED.value)


def route_task_queue(uid: str) -> str:
    """The task queue of ``start_route(..., uid)``, which also begins its workflow ids."""
    return f"bench-{uid}"


def route_workflow_ids(uid: str, prefix: str, count: int) -> list[str]:
    """The workflow ids ``start_route(..., uid)`` gives ``order_records(..., prefix, count)``."""
    return [f"{route_task_queue(uid)}-{order_id(prefix, n)}" for n in range(count)]


def route_query(uid: str) -> str:
    """The visibility query for the workflows ``start_route(..., uid)`` starts (its task queue)."""
    return f"TaskQueue = '{route_task_queue(uid)}'"


async def await_count(client: Client, query: str, expected: int, timeout: float) -> int:
    """Wait (up to ``timeout`` seconds) until visibility counts ``expected`` workflows.

    Returns the last count, which is below ``expected`` only when the time ran out.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = (await client.count_workflows(query)).count
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.5)


async def await_committed(settings: Settings, group: str, topic: str, timeout: float) -> int:
    """Wait (up to ``timeout`` seconds) until ``group`` has committed every record of
    ``topic``; return how many records the group still has to commit then (0 when done).

    Reads Kafka only. A bridge round waits with this, not with ``await_count``: a
    visibility count over thousands of workflows costs the in-memory server about as much
    CPU as 4 starts (34 ms each in the probe of 2026-12-03), and polled while a round runs
    it slowed the very rate being measured, on the bridge side only. For the same reason
    the topic's end offsets are read once (its records are all produced before a round)
    and one admin client asks for the group's offsets every half second: ``consumer_lag``
    connects two clients afresh per call, which polled this often cost the broker about
    55 ms of CPU a second (0.06 of a core) during the round.
    """
    deadline = time.monotonic() + timeout
    ends = {
        TopicPartition(p.topic, p.partition): p.end
        for p in await consumer_lag(settings, group, [topic])
    }
    admin = kafka.admin(settings)
    await admin.start()
    try:
        while True:
            lags = partition_lags(await admin.list_consumer_group_offsets(group), ends)
            behind = sum(partition.lag for partition in lags)
            if (lags and behind == 0) or time.monotonic() > deadline:
                return behind
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def executions(client: Client, query: str) -> list[tuple[str, float]]:
    """``(workflow id, start time)`` of every execution ``query`` matches.

    A workflow id started twice (two runs) appears twice.
    """
    return [
        (wf.id, timestamp(wf.start_time))
        async for wf in client.list_workflows(query, page_size=1000)
    ]


async def start_times(
    client: Client, query: str, expected: int, timeout: float
) -> dict[str, float]:
    """Workflow id to the time Temporal started it, for every workflow ``query`` matches.

    Waits (up to ``timeout`` seconds) until visibility lists ``expected`` of them.
    """
    await await_count(client, query, expected, timeout)
    return dict(await executions(client, query))


@dataclass(frozen=True)
class StartCheck:
    """How the workflows a run started compare with the ids its events should start."""

    expected: int
    listed: int
    missing: tuple[str, ...]
    duplicated: tuple[str, ...]
    unexpected: tuple[str, ...]

    @property
    def exactly_once(self) -> bool:
        """Every expected id started exactly once, and nothing else."""
        return not (self.missing or self.duplicated or self.unexpected)

    def raise_unless_exactly_once(self, what: str) -> None:
        """``RuntimeError`` naming what went wrong (a few ids of each kind) unless exactly once."""
        if self.exactly_once:
            return
        problems = [
            f"{len(ids)} {kind} (e.g. {', '.join(ids[:3])})"
            for kind, ids in (
                ("missing", self.missing),
                ("started more than once", self.duplicated),
                ("not expected", self.unexpected),
            )
            if ids
        ]
        raise RuntimeError(
            f"{what}: {self.listed} workflows listed for {self.expected} events; "
            + "; ".join(problems)
        )


def check_starts(expected: Iterable[str], listed: Iterable[str]) -> StartCheck:
    """Compare the workflow ids listed (one per execution) with the ids expected."""
    wanted = set(expected)
    counts: dict[str, int] = {}
    for workflow_id in listed:
        counts[workflow_id] = counts.get(workflow_id, 0) + 1
    return StartCheck(
        expected=len(wanted),
        listed=sum(counts.values()),
        missing=tuple(sorted(wanted - counts.keys())),
        duplicated=tuple(sorted(w for w, n in counts.items() if n > 1 and w in wanted)),
        unexpected=tuple(sorted(counts.keys() - wanted)),
    )


async def paced(
    items: Iterable[T],
    call: Callable[[T], Awaitable[object]],
    rate: float,
    concurrency: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """``call`` each item, at most ``concurrency`` at once and ``rate`` calls per second.

    A token bucket of one token (the bridge's own ``TokenBucket``): the n-th call is
    due n / ``rate`` seconds after the first, whichever caller makes it, so a slow
    call delays only its caller. Returns the number of calls made.
    """
    bucket = TokenBucket(rate, 1, clock)
    queue = iter(items)
    made = 0

    async def caller() -> None:
        nonlocal made
        for item in queue:
            delay = bucket.reserve()
            if delay > 0:
                await sleep(delay)
            await call(item)
            made += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return made
