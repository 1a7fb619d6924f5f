"""Event → start latency under an open-loop producer at half the measured ceiling.

The ceiling is the raw start rate the throughput scenario measured in this run
(measured here, briefly, when that scenario did not run). Events are produced at
a fixed rate whatever the bridge does; each one's latency runs from just before it
is handed to the producer to the start time Temporal recorded for its workflow. The
bridge's own ``ktb_event_to_action_seconds`` histogram (record timestamp → the start
call returned) is the cross-check; the Kafka hop alone (the same records at the same
rate to a plain group consumer reading as the bridge reads) shows what any Kafka-fed
start pays on this machine, and Temporal's mean answer time to each side's start calls
(the bridge's ``ktb_temporal_call_seconds``) what the server gave each. A control
round repeats the direct calls beside processes spinning for the cores the bridge
round added to the machine (the bridge, its producer and Kafka beyond the caller):
what a direct caller gets from a server that shares the machine as it did then.
Baseline: direct ``start_workflow`` calls at the same fixed rate, measured the
same way (call time → recorded start time), in three parts with the bridge idle:
before, between and after the bridge's two halves (a quarter, a half and a quarter
of their time), taken together. Just after the throughput scenario the server is
still working off its burst (direct calls right after 20,000 starts: p50 4.5 ms, a
minute later 2.1-2.3 ms) and later it slows as workflows pile up, so a baseline
taken at other moments than the bridge's events measures another server. Around each
direct part, for as long as it and half before it, half after, a plain Kafka-fed
starter (``bench.plain``: a group consumer reading ``read_committed``, the bridge's
decode and the same start call, and nothing else) takes events at the rate on a topic
of its own, measured the same way, at the bridge's moments on average too: the least
that a starter built from the bridge's packages (aiokafka, the Temporal SDK) pays
here, so the bridge's own part is its distance from it. With the
run's own stack, the cores each process used while the events flowed (Temporal, Kafka,
the bridge, this process as caller or producer) show what each round asked of the
machine the server shares.
Every round runs ``SETTLE_S`` seconds at the rate before its latencies count: the
steady state is measured, and the bridge's first seconds after joining are reported
apart. The plain starter settles once, before the bridge starts, and then sits idle
until its first round, as the bridge does between its halves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener

from bench.bridge_process import BridgeProcess, Child, histogram_quantile, sample_total
from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    cores_line,
    cores_used,
    cpu_load,
    create_topic,
    fmt,
    mean_cores,
    open_loop,
    order_records,
    percentile,
    rounded,
    route_query,
    route_workflow_ids,
    stack_pids,
    start_route,
    start_times,
    write_routes,
)
from bench.plain import PlainStarter
from bench.throughput import raw_rate, start_requests
from bridge import kafka
from bridge.wiring import started_producer

NAME = "latency"
P50_EXTRA_MS = 3.0
"""The bridge's p50 may exceed the direct call's by this much."""
P99_FACTOR = 2.5
"""The bridge's p99 may be this many times the direct call's."""
WARM_UP = 20
"""Events that show a fresh bridge process has joined its group and started workflows."""
SETTLE_S = 5.0
"""Seconds each side runs at the rate before its latencies count. A bridge process that
has just joined its group shares the machine with a broker still serving the join, the
first commits and first writes (and compiling the code for them) for a second or two:
without this, those seconds' events were the p99 of the whole minute. The bridge's
settling seconds are reported beside the figures (``settling``)."""


def ceiling(ctx: BenchContext) -> float | None:
    """The start ceiling the throughput scenario measured in this run, if it ran.

    The lower of the best raw round and the best bridge round: half of it keeps both the
    server and the bridge below saturation, so what is measured is latency, not queueing.
    """
    earlier = ctx.results.get("throughput")
    if earlier is None:
        return None
    rates = [earlier.metrics.get("raw_best_per_s"), earlier.metrics.get("bridge_best_per_s")]
    known = [float(r) for r in rates if r]
    return min(known) if known else None


def settling(rate: float) -> int:
    """Calls or events of the ``SETTLE_S`` seconds before the measured ones at ``rate``."""
    return max(WARM_UP, int(rate * SETTLE_S))


def summary(latencies_ms: list[float]) -> dict[str, Any]:
    """p50, p99 and max of latencies in milliseconds."""
    return {
        "p50_ms": rounded(percentile(latencies_ms, 50), 2),
        "p99_ms": rounded(percentile(latencies_ms, 99), 2),
        "max_ms": rounded(max(latencies_ms), 2),
        "events": len(latencies_ms),
    }


async def warm_and_settle(
    ctx: BenchContext, producer: AIOKafkaProducer, topic: str, uid: str, rate: float,
    starter: Child,
) -> list[float]:  # fmt: skip
    """Bring ``starter``, reading ``topic`` (the example route of ``uid``), to its steady
    state: ``WARM_UP`` events at ``rate``, waited for until Temporal lists them (it is in
    its group and every code path has run once), then ``SETTLE_S`` seconds at the rate.
    Returns the settling events' send times (``settling_prefix``). When the warm-up's
    workflows are not all listed within 120 s, raises the starter's own error if it has
    exited (with its log), ``RuntimeError`` otherwise."""
    warm = order_records(ctx.catalog, f"{uid}w", WARM_UP)
    await open_loop(producer, topic, warm, rate)
    started = await start_times(ctx.client, route_query(uid), WARM_UP, timeout=120)
    if len(started) < WARM_UP:
        starter.check()
        raise RuntimeError(f"{len(started)} of {WARM_UP} warm-up events started a workflow")
    settle = order_records(ctx.catalog, settling_prefix(uid), settling(rate))
    return await open_loop(producer, topic, settle, rate)


def latencies(
    times: Mapping[str, float], uid: str, prefix: str, sends: Sequence[float]
) -> list[float]:
    """Milliseconds from each send to the start Temporal recorded, for the events
    ``order_records(..., prefix, len(sends))`` sent to the example route of ``uid``;
    raises ``RuntimeError`` when one has no workflow in ``times``."""
    ids = route_workflow_ids(uid, prefix, len(sends))
    found = [(times[i] - at) * 1000 for i, at in zip(ids, sends, strict=True) if i in times]
    if len(found) < len(sends):
        raise RuntimeError(f"only {len(found)} of {len(sends)} events started a workflow")
    return found


def settling_prefix(uid: str) -> str:
    """The record prefix of the settling events ``warm_and_settle`` sends for ``uid``."""
    return f"{uid}s"


class FeedRound(NamedTuple):
    """One round of a ``Feed``."""

    prefix: str
    """Its records' prefix (``order_records``)."""
    sent: list[float]
    """Each event's send time."""
    cores: dict[str, float]
    """The cores each process used while they were sent."""


class Feed:
    """Events at ``rate`` to a starter's topic (the example route of ``uid``) in rounds,
    after its warm-up and settling (``open``): each round's events, send times and the
    cores the stack, the starter (``role``) and this process (the producer) used while
    they were sent."""

    def __init__(
        self, ctx: BenchContext, rate: float, uid: str, topic: str, producer: AIOKafkaProducer,
        starter: Child, role: str, settle_sent: list[float],
    ) -> None:  # fmt: skip
        self.ctx, self.rate, self.uid, self.topic = ctx, rate, uid, topic
        self.producer, self.starter, self.settle_sent = producer, starter, settle_sent
        self.pids = {**stack_pids(ctx), role: starter.pid, "bench (producer)": os.getpid()}
        self.rounds: list[FeedRound] = []
        """Each round: its record prefix (``<uid>r<n>``), send times and cores."""

    @classmethod
    async def open(
        cls, ctx: BenchContext, rate: float, uid: str, topic: str, producer: AIOKafkaProducer,
        starter: Child, role: str,
    ) -> Feed:  # fmt: skip
        """A feed to ``starter`` once ``warm_and_settle`` has brought it to its steady state."""
        settle_sent = await warm_and_settle(ctx, producer, topic, uid, rate, starter)
        return cls(ctx, rate, uid, topic, producer, starter, role, settle_sent)

    async def round(self, seconds: float) -> None:
        """Events at the rate for ``seconds``; raises the starter's error (``Child.check``)
        if it has exited."""
        self.starter.check()
        prefix = f"{self.uid}r{len(self.rounds)}"
        records = order_records(self.ctx.catalog, prefix, int(self.rate * seconds))
        sent, cores = await cores_used(
            self.pids, open_loop(self.producer, self.topic, records, self.rate)
        )
        self.rounds.append(FeedRound(prefix, sent, cores))

    async def start_times(self) -> dict[str, float]:
        """The start time of every workflow the feed's events started (warm-up and
        settling too), once visibility lists them all (or a time in proportion ran out)."""
        sent = sum(len(r.sent) for r in self.rounds)
        expected = WARM_UP + len(self.settle_sent) + sent
        return await start_times(
            self.ctx.client, route_query(self.uid), expected, timeout=120 + sent / 10
        )

    def latencies(self, times: Mapping[str, float]) -> list[list[float]]:
        """Each round's latencies (``latencies``)."""
        return [latencies(times, self.uid, r.prefix, r.sent) for r in self.rounds]

    def settled(self, times: Mapping[str, float]) -> list[float]:
        """The settling events' latencies (``latencies``)."""
        return latencies(times, self.uid, settling_prefix(self.uid), self.settle_sent)

    def cores(self) -> dict[str, float]:
        """The cores each process used over the rounds, each weighted by its events."""
        return mean_cores([r.cores for r in self.rounds], [len(r.sent) for r in self.rounds])

    async def result(self) -> dict[str, Any]:
        """p50, p99 and max over every round, each round's own, and the cores each
        process used; raises the starter's error if it has exited."""
        self.starter.check()
        each = self.latencies(await self.start_times())
        return {
            **summary([ms for round_ in each for ms in round_]),
            "rounds": [summary(round_) for round_ in each],
            "cores": self.cores(),
        }


async def bridge_latencies(
    ctx: BenchContext,
    rate: float,
    seconds: float,
    between: Callable[[float], Awaitable[None]],
) -> dict[str, Any]:
    """Latencies of events produced at ``rate`` through a bridge process for ``seconds``,
    in two halves, and the cores the stack, the bridge and this process (the producer)
    used while they flowed.

    ``between(share)`` runs with the bridge idle before, between and after the halves,
    given the share of the baseline's time each time (¼, ½, ¼): the baseline's calls
    and the bridge's events then see the server at the same moments on average, as it
    settles from what ran before and slows as workflows pile up.
    """
    uid = ctx.uid()
    topic = f"bench-lat-{uid}"
    await create_topic(ctx.settings, topic)
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [start_route(topic, uid)])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    bridge = BridgeProcess(settings, routes, ctx.work_dir / f"bridge-{uid}.log")
    await bridge.start()
    try:
        async with started_producer(ctx.settings, linger_ms=0) as producer:
            halves = await Feed.open(ctx, rate, uid, topic, producer, bridge, "bridge")
            await between(0.25)
            before = await bridge.metrics()
            for share in (0.5, 0.25):
                await halves.round(seconds / 2)
                await between(share)
            times = await halves.start_times()
            after = await bridge.metrics()
    finally:
        await bridge.stop()

    each = halves.latencies(times)
    settled = halves.settled(times)
    buckets = _delta(
        after.get("ktb_event_to_action_seconds_bucket", []),
        before.get("ktb_event_to_action_seconds_bucket", []),
    )
    calls, call_seconds = (
        sample_total(after, f"ktb_temporal_call_seconds_{part}", action="start")
        - sample_total(before, f"ktb_temporal_call_seconds_{part}", action="start")
        for part in ("count", "sum")
    )
    return {
        **summary([ms for half_ in each for ms in half_]),
        "offered_per_s": rounded(rate),
        "achieved_per_s": rounded(
            statistics.fmean((len(r.sent) - 1) / (r.sent[-1] - r.sent[0]) for r in halves.rounds)
        ),
        "bridge_histogram_p50_ms": rounded(histogram_quantile(buckets, 0.5) * 1000, 2),
        "bridge_histogram_p99_ms": rounded(histogram_quantile(buckets, 0.99) * 1000, 2),
        "call_mean_ms": rounded(call_seconds / calls * 1000, 2) if calls else None,
        "cores": halves.cores(),
        "halves": [summary(half_) for half_ in each],
        "settling": summary(settled),
    }


def plain_topic(uid: str) -> str:
    """The plain starter's topic (and consumer group) in a run's round ``uid``."""
    return f"bench-plain-{uid}"


@contextlib.asynccontextmanager
async def plain_rounds(ctx: BenchContext, rate: float) -> AsyncIterator[Feed]:
    """A plain starter process (``bench.plain``) on a topic and in a group of its own,
    warmed up and settled at ``rate``, and the feed of its rounds, for the block: its
    latencies measured as the bridge's are."""
    uid = ctx.uid()
    topic = plain_topic(uid)  # its consumer group's name too
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [start_route(topic, uid)])
    await create_topic(ctx.settings, topic)
    async with (
        PlainStarter(ctx.settings, routes, topic, ctx.work_dir / f"{topic}.log") as starter,
        started_producer(ctx.settings, linger_ms=0) as producer,
    ):
        yield await Feed.open(ctx, rate, uid, topic, producer, starter, "plain starter")


def load_added(direct: dict[str, float], bridge: dict[str, float]) -> float:
    """The cores the bridge round's processes took beyond the direct round's, Temporal
    left out: what the bridge, its producer and Kafka added to the machine."""
    return sum(v for k, v in bridge.items() if k != "Temporal") - sum(
        v for k, v in direct.items() if k != "Temporal"
    )


def _delta(
    after: list[tuple[dict[str, str], float]], before: list[tuple[dict[str, str], float]]
) -> list[tuple[dict[str, str], float]]:
    """Histogram buckets counted between two scrapes (the warm-up taken out)."""
    earlier = {labels.get("le"): value for labels, value in before}
    return [(labels, value - earlier.get(labels.get("le"), 0.0)) for labels, value in after]


async def kafka_hop(ctx: BenchContext, rate: float, seconds: float) -> dict[str, Any]:
    """Latencies of the Kafka hop alone: records produced at ``rate`` (as the bridge round
    produces them) to a consumer in a group reading ``read_committed``, as the bridge
    reads; from just before the send (as the bridge round's clock starts) to the record in
    hand. What any Kafka-fed start pays here."""
    uid = ctx.uid()
    topic = f"bench-hop-{uid}"
    await create_topic(ctx.settings, topic)
    count = int(rate * seconds)
    warm = settling(rate)
    records = order_records(ctx.catalog, uid, warm + count)
    consumer = kafka.consumer(
        ctx.settings, group_id=f"bench-hop-{uid}", auto_offset_reset="earliest",
        isolation_level="read_committed",
    )  # fmt: skip
    joined = asyncio.Event()

    class Joined(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            return None

        async def on_partitions_assigned(self, assigned: Any) -> None:
            joined.set()

    producer = kafka.producer(ctx.settings, linger_ms=0)
    received: dict[bytes | None, float] = {}
    """When each record was in hand, by key (every record has its own)."""

    async def consume() -> None:
        while len(received) < len(records):
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for consumed in batch.values():
                for record in consumed:
                    received[record.key] = now

    await consumer.start()
    await producer.start()
    consumer.subscribe([topic], listener=Joined())
    reading = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(joined.wait(), 30)  # in its group, as a running bridge is
        sent = await open_loop(producer, topic, records, rate)
        try:
            await asyncio.wait_for(reading, 60)
        except TimeoutError:
            raise RuntimeError(f"hop: {len(received)} of {len(records)} read") from None
    finally:
        reading.cancel()  # done already unless the group never formed or records went missing
        await producer.stop()
        await consumer.stop()
    measured = range(warm, len(records))
    return summary([(received[records[n].key] - sent[n]) * 1000 for n in measured])


class DirectRound(NamedTuple):
    """What ``direct_round`` measured."""

    latencies_ms: list[float]
    """Each counted call's latency: call time → recorded start."""
    calls_ms: list[float]
    """Each counted call's time until Temporal answered."""
    cores: dict[str, float]
    """The cores each process used while the calls ran."""
    calls: int
    """Calls made, the settling ones too: the round's length at its rate."""


async def direct_round(
    ctx: BenchContext, rate: float, seconds: float, load: float = 0.0, settle: bool = True
) -> DirectRound:
    """Direct ``start_workflow`` calls issued at ``rate`` for ``seconds``: each one's
    latency (call time → recorded start) and Temporal's answer time, in milliseconds,
    and the cores the stack and this process (the caller) used meanwhile; with
    ``load``, beside processes spinning for that many cores (``cpu_load``). Its first
    ``SETTLE_S`` seconds do not count unless ``settle`` is off (a caller that has just
    made calls at the rate)."""
    uid = ctx.uid()
    count = int(rate * seconds)
    warm = settling(rate) if settle else 0
    records = order_records(ctx.catalog, uid, warm + count)
    requests = start_requests(ctx, f"bench-raw-{uid}", uid, records)
    called: dict[str, float] = {}
    answered: dict[str, float] = {}

    def on_answer(wf_id: str) -> Callable[[asyncio.Task[Any]], None]:
        return lambda _: answered.__setitem__(wf_id, time.time())

    async def call_all() -> None:
        calls: list[asyncio.Task[Any]] = []
        start = time.perf_counter()
        for n, request in enumerate(requests):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            called[request["id"]] = time.time()
            workflow = request.pop("workflow")
            call = asyncio.create_task(ctx.client.start_workflow(workflow, **request))
            call.add_done_callback(on_answer(request["id"]))
            calls.append(call)
        await asyncio.gather(*calls)

    async with cpu_load(load) as spinners:
        pids = {**stack_pids(ctx), "bench (caller)": os.getpid(), **spinners}
        _, cores = await cores_used(pids, call_all())
    times = await start_times(ctx.client, route_query(uid), len(requests), 60)
    measured = [(wf_id, at) for n, (wf_id, at) in enumerate(called.items()) if n >= warm]
    return DirectRound(
        [(times[wf_id] - at) * 1000 for wf_id, at in measured],
        [(answered[wf_id] - at) * 1000 for wf_id, at in measured],
        cores,
        len(requests),
    )


def direct_summary(rate: float, rounds: Sequence[DirectRound]) -> dict[str, Any]:
    """The latencies of ``direct_round`` rounds taken together, each round's own figures
    beside them when there are several, and the cores each process used on average
    (each round weighted by its length)."""
    latencies_ms = [ms for round_ in rounds for ms in round_.latencies_ms]
    calls_ms = [ms for round_ in rounds for ms in round_.calls_ms]
    result = {
        **summary(latencies_ms),
        "offered_per_s": rounded(rate),
        "call_mean_ms": rounded(statistics.fmean(calls_ms), 2),
        "cores": mean_cores([r.cores for r in rounds], [r.calls for r in rounds]),
    }
    if len(rounds) > 1:
        result["rounds"] = [
            {**summary(r.latencies_ms), "call_mean_ms": rounded(statistics.fmean(r.calls_ms), 2)}
            for r in rounds
        ]
    return result


async def run(ctx: BenchContext) -> ScenarioResult:
    """The bridge for the scenario's duration at half the ceiling, in two halves, with
    direct calls at that rate before, between and after them and the plain starter's
    rounds around each of those; then the Kafka hop alone and the control round."""
    seconds = ctx.size(15, 60)
    measured = ceiling(ctx)
    notes = []
    if measured is None:
        measured = await raw_rate(ctx, ctx.size(600, 2000), 64)
        notes.append(f"ceiling measured here: {fmt(measured, '/s')} raw starts at concurrency 64")
    rate = measured / 2
    # The direct calls run before, between and after the bridge's two halves (a quarter,
    # a half, a quarter of their time), taken together: the server settles from the
    # throughput scenario and slows as workflows pile up, and this way the baseline
    # sees it at the same moments as the bridge on average. A plain Kafka-fed starter
    # (bench.plain) runs for as long again around each direct part, half before and half
    # after it, so that its moments too are the bridge's on average: what the bridge's
    # packages and Kafka cost at this rate before anything the bridge adds.
    directs: list[DirectRound] = []
    async with plain_rounds(ctx, rate) as plain:

        async def between(share: float) -> None:
            part = seconds / 2 * share
            await plain.round(part / 2)
            directs.append(await direct_round(ctx, rate, part, settle=not directs))
            await plain.round(part / 2)

        bridge = await bridge_latencies(ctx, rate, seconds, between)
        plain_result = await plain.result()
    raw = direct_summary(rate, directs)
    hop = await kafka_hop(ctx, rate, max(10, seconds / 2))
    # The control: direct calls again, beside spinning processes that take the cores the
    # bridge round added, so the server shares the machine as it did with the bridge.
    extra = load_added(raw["cores"], bridge["cores"])
    loaded = (
        direct_summary(rate, [await direct_round(ctx, rate, max(10, seconds / 2), extra)])
        if extra >= 0.02
        else None
    )
    p50_limit = raw["p50_ms"] + P50_EXTRA_MS
    p99_limit = raw["p99_ms"] * P99_FACTOR
    p50_met = bridge["p50_ms"] <= p50_limit
    p99_met = bridge["p99_ms"] <= p99_limit
    notes.append(
        f"bridge histogram cross-check (record timestamp -> start returned): "
        f"p50 ~{bridge['bridge_histogram_p50_ms']} ms, p99 ~{bridge['bridge_histogram_p99_ms']} ms"
    )
    notes.append(
        f"the bridge's first {SETTLE_S:g} s at the rate after joining its group (not counted): "
        f"p50 {bridge['settling']['p50_ms']} ms, p99 {bridge['settling']['p99_ms']} ms; "
        f"the direct rounds' first {SETTLE_S:g} s are left out the same way"
    )
    notes.append(
        f"the Kafka hop alone (send -> a group consumer has the record, read_committed, "
        f"same rate): p50 {hop['p50_ms']} ms, p99 {hop['p99_ms']} ms"
    )
    notes.append(
        f"Temporal's answer to each start call, mean: direct {raw['call_mean_ms']} ms, bridge "
        f"{bridge['call_mean_ms']} ms (its ktb_temporal_call_seconds); the rest of the bridge's "
        "time is before its call: the Kafka hop and its own path"
    )
    notes.append(
        "direct calls before, between and after the bridge's halves: "
        + "; ".join(f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms" for r in raw["rounds"])
        + "; the bridge's halves: "
        + "; ".join(f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms" for r in bridge["halves"])
    )
    notes.append(
        "a plain Kafka-fed starter (bench.plain: a group consumer reading read_committed, "
        "the decode and the start call, nothing else) at the same rate around each direct "
        f"part: p50 {plain_result['p50_ms']} ms, p99 {plain_result['p99_ms']} ms (rounds: "
        + "; ".join(f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms" for r in plain_result["rounds"])
        + f"); the bridge's p50 is {bridge['p50_ms'] - plain_result['p50_ms']:+.2f} ms from it"
    )
    notes.append(
        "cores in use while the events flowed (2 s of CPU in 1 s = 2 cores): direct round "
        f"{cores_line(raw['cores'])}; bridge round {cores_line(bridge['cores'])}; plain "
        f"starter {cores_line(plain_result['cores'])}"
    )
    if loaded is not None:
        notes.append(
            f"direct calls again beside processes spinning for the {extra:.2f} cores the "
            f"bridge round added: p50 {loaded['p50_ms']} ms, p99 {loaded['p99_ms']} ms, "
            f"Temporal's answer {loaded['call_mean_ms']} ms on average "
            f"({cores_line(loaded['cores'])})"
        )
    label = f"at {fmt(rate, '/s')} for {seconds} s"
    return ScenarioResult(
        NAME,
        {
            "p50_ms": bridge["p50_ms"],
            "p99_ms": bridge["p99_ms"],
            "max_ms": bridge["max_ms"],
            "target": f"p50 <= direct p50 + {P50_EXTRA_MS:g} ms, p99 <= {P99_FACTOR:g}x direct p99",
            "met": p50_met and p99_met,
            "ceiling_per_s": rounded(measured),
            "seconds": seconds,
            "bridge": bridge,
            "raw": raw,
            "kafka_hop": hop,
            "plain_starter": plain_result,
            "raw_beside_bridge_load": loaded,
        },
        [
            Row(
                f"event -> start p50 ({label})",
                fmt(bridge["p50_ms"], "ms", 1),
                fmt(raw["p50_ms"], "ms (direct call)", 1),
                "",
                f"<= direct + {P50_EXTRA_MS:g} ms ({p50_limit:.1f} ms)",
                p50_met,
            ),
            Row(
                "event -> start p99",
                fmt(bridge["p99_ms"], "ms", 1),
                fmt(raw["p99_ms"], "ms (direct call)", 1),
                "",
                f"<= {P99_FACTOR:g}x direct ({p99_limit:.1f} ms)",
                p99_met,
            ),
            Row(
                "event -> start max",
                fmt(bridge["max_ms"], "ms", 1),
                fmt(raw["max_ms"], "ms (direct call)", 1),
            ),
        ],
        notes,
    )
