"""Start throughput: the bridge against direct ``client.start_workflow`` on the same server.

Raw ceiling: this process calls ``client.start_workflow`` with the very request the
bridge would send for each event (workflow type, deterministic id, the event data
as argument, the bridge's memo and search attributes, the same id policies), at
the best of several concurrencies, and in the order a consumer reads the events
from a topic like the bridge's (``consumer_order``): the server's cost per start
depends on the order of the workflow ids it inserts, and ids in their numeric
order (next to each other in its indexes) cost it less than the same ids
as they come out of six partitions, which is how both a bridge and any direct
consumer of the topic get them. Bridge: the same number of events is produced
to a topic first, then a bridge process (``run_bridge``, as ``ktb bridge``) starts
them at its default settings (the adaptive limit of actions in Temporal), which is
what the target is about, then with its concurrency fixed to the raw side's best
(``KTB_MAX_IN_FLIGHT`` and ``KTB_TEMPORAL_IN_FLIGHT``). The in-memory server's rate
moves by a third within a minute by itself (direct rounds of 6,000 starts back to back
read 229, 187, 170, 143 and 210 /s), so every round runs raw, default, raw, fixed and
raw, one after the other, and each bridge round is compared with the mean of the raw
rounds just before and after it (``bracketed``); each side's rounds count together,
their mean rate reported beside the mean of their references (``mean_round``). With more
rounds than a full run's (``--rounds``), each further ``SERVER_ROUNDS`` rounds run on a
fresh in-memory server.
Both rates are measured the same way: the starts over the span from the first start
time Temporal recorded to the moment the last call was answered (the raw callers'
clock; the bridge's provenance items, read after the round: ``last_answer``, a topic
of the round's own). Not the span of the start times alone:
Temporal stamps those as requests arrive, so 256 calls sent at once shorten it by the
time the server takes for 256 starts (``bench.common.answered_rate``); that span is
reported beside, per round. No worker polls the task queues, so the server's effort
per start is the same on both sides; and while a bridge round runs, the harness waits
on the group's committed offsets in Kafka, never on Temporal's visibility, whose
counts cost the server CPU (``bench.common.await_committed``).

CPU per start: the bridge process's CPU time (psutil, every thread) from its first
start to its last, per event. After each bridge round a direct caller in a
process of its own (``bench.direct``) makes the same number of starts, paced to
the rate that round reached, at the same concurrency, and its CPU time is counted
the same way; the ratio of the two means over the rounds is what the bridge costs per
start on top of the SDK call itself.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.service import RPCError

from bench.bridge_process import BridgeProcess
from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    answered_rate,
    await_committed,
    consumer_record,
    cores_line,
    cores_used,
    create_topic,
    fmt,
    last_answer,
    order_records,
    produce_all,
    provenance_topic,
    ratio,
    renewed_note,
    rounded,
    route_query,
    span_rate,
    stack_pids,
    start_request,
    start_route,
    start_times,
    write_routes,
)
from bench.direct import run_direct
from bridge import kafka
from bridge.backoff import Backoff
from bridge.envelope import KafkaRecord
from bridge.ingress import Ingress
from bridge.routes import Router, RoutesConfig
from bridge.temporal.requests import TRANSIENT_CODES

NAME = "throughput"
ROUND_PARTS = ("raw", "default", "raw", "fixed", "raw")
"""A round's parts in order: raw, the bridge at default settings, raw, the bridge at the
raw side's concurrency, raw."""
TARGET = 0.95
"""Bridge ÷ raw starts/s at the bridge's default settings."""
CPU_TARGET = 1.5
RAW_TRIES = 5
"""Tries of one direct start call that meets a transient error. The in-memory server can
stall for seconds: in one scale run a direct call timed out in the ninth round on its
server (about 48,000 workflows) and the scenario ended there, where the bridge, which
retries such calls, would have gone on."""
RETRY_PAUSE_S = 0.2
"""The pause before a direct start call's second try, doubled before each further one
(``bridge.backoff.Backoff``, the bridge's own retry schedule)."""
RETRY_MAX_PAUSE_S = 2.0
"""The longest pause between two tries of a direct start call."""
REFERENCE = "/s (direct, mean of the raw rounds beside each bridge round)"
"""The baseline column of a row of bracketed rounds: their mean reference
(``mean_round``), so that the bridge's mean rate divided by it is the ratio shown."""


def start_requests(
    ctx: BenchContext, topic: str, uid: str, records: Sequence[KafkaRecord]
) -> list[dict[str, Any]]:
    """The ``start_workflow`` keyword arguments the bridge sends for ``records`` (order
    events of ``order_records(ctx.catalog, uid, ...)`` on ``topic``), in their order.

    Built by decoding and routing real records through the bridge's own router,
    before any timing starts, so the raw side pays nothing the bridge does not.
    """
    router = Router(RoutesConfig.parse({"routes": [start_route(topic, uid)]}))
    ingress = Ingress(ctx.catalog, router, None, None)
    return [
        start_request(*ingress.plan(consumer_record(topic, offset, record)))
        for offset, record in enumerate(records)
    ]


async def consumer_order(
    ctx: BenchContext, topic: str, records: Sequence[KafkaRecord]
) -> list[int]:
    """The indexes of ``records`` (distinct keys) in the order a consumer reads them back
    from ``topic``, made here as a bridge round's is (``create_topic``: partitions filled
    by the producer's key hash), fetching as the bridge does (its partition fetch size,
    batches of up to 2,000 records, each batch partition by partition)."""
    count = len(records)
    index = {record.key: n for n, record in enumerate(records)}
    await create_topic(ctx.settings, topic)
    await produce_all(ctx.settings, topic, records)
    consumer = kafka.consumer(
        ctx.settings,
        topic,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=ctx.settings.fetch_partition_bytes,
    )
    await kafka.start(consumer, ctx.settings)
    order: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(order) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {len(order)} of {count} events back from {topic}")
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            order.extend(index[r.key] for records in batch.values() for r in records)
    finally:
        await kafka.stop_consumer(consumer)
    if sorted(order) != list(range(count)):
        raise RuntimeError(f"{topic} gave back {len(order)} events, not each of {count} once")
    return order


async def ordered_requests(ctx: BenchContext, uid: str, count: int) -> list[dict[str, Any]]:
    """``start_requests`` for ``count`` order events, in the order a consumer reads them
    (``consumer_order``): the same records are routed and produced, once each."""
    topic = f"bench-raw-{uid}"
    records = order_records(ctx.catalog, uid, count)
    requests = start_requests(ctx, topic, uid, records)
    return [requests[n] for n in await consumer_order(ctx, topic, records)]


async def start_with_retries(ctx: BenchContext, request: dict[str, Any]) -> None:
    """``ctx.client.start_workflow`` with ``request`` (``start_requests``), tried up to
    ``RAW_TRIES`` times in all, a moment apart, on an error the bridge retries too
    (``TRANSIENT_CODES``); each try again counted in ``ctx.retried_calls`` as it is made
    (callers run side by side). The request's id policies make a repeated start of a
    workflow the first try did start answer with it, as for the bridge."""
    workflow = request["workflow"]
    arguments = {k: v for k, v in request.items() if k != "workflow"}
    backoff = Backoff(RETRY_PAUSE_S, RETRY_MAX_PAUSE_S)
    for tried in range(1, RAW_TRIES + 1):
        try:
            await ctx.client.start_workflow(workflow, **arguments)
            return
        except RPCError as exc:
            if exc.status not in TRANSIENT_CODES or tried == RAW_TRIES:
                raise
        await asyncio.sleep(backoff.next())
        ctx.retried_calls += 1


async def raw_rate(ctx: BenchContext, count: int, concurrency: int) -> float:
    """Starts per second of direct ``start_workflow`` calls at ``concurrency``."""
    return (await raw_round(ctx, count, concurrency))[0]


async def raw_round(
    ctx: BenchContext, count: int, concurrency: int
) -> tuple[float, float, dict[str, float]]:
    """``raw_rate``, the span rate of the start times alone (``span_rate``: arrivals),
    and the cores the stack and this process (the caller) used while the calls ran."""
    uid = ctx.uid()
    queue = iter(await ordered_requests(ctx, uid, count))
    answered = 0.0
    """When the last call was answered so far."""

    async def caller() -> None:
        nonlocal answered
        for request in queue:
            await start_with_retries(ctx, request)
            answered = time.time()

    pids = {**stack_pids(ctx), "bench (caller)": os.getpid()}
    _, cores = await cores_used(pids, asyncio.gather(*(caller() for _ in range(concurrency))))
    times = await start_times(ctx.client, route_query(uid), count, timeout=60)
    return answered_rate(times.values(), answered), span_rate(times.values()), cores


async def bridge_rate(
    ctx: BenchContext, count: int, max_in_flight: int | None = None
) -> tuple[float, float, dict[str, float], int, float]:
    """Starts per second through a bridge process, its CPU microseconds per event, the
    cores the stack, the bridge and this process used from its first start to its last
    commit, its limit of actions in Temporal at the end (``ktb_temporal_in_flight_limit``),
    and the span rate of its start times alone (``span_rate``: arrivals).

    ``max_in_flight`` fixes ``KTB_MAX_IN_FLIGHT`` and ``KTB_TEMPORAL_IN_FLIGHT``;
    ``None`` keeps the defaults (the adaptive limit).
    """
    uid = ctx.uid()
    topic = f"bench-tp-{uid}"
    await create_topic(ctx.settings, topic)
    await produce_all(ctx.settings, topic, order_records(ctx.catalog, uid, count))
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [start_route(topic, uid)])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    provenance = provenance_topic(uid)
    env = {"KTB_PROVENANCE_TOPIC": provenance}
    if max_in_flight is not None:
        env |= {
            "KTB_MAX_IN_FLIGHT": str(max_in_flight),
            "KTB_TEMPORAL_IN_FLIGHT": str(max_in_flight),
        }
    bridge = BridgeProcess(settings, routes, ctx.work_dir / f"bridge-{uid}.log", env)
    query = route_query(uid)
    await bridge.start()
    try:
        # CPU is counted from the first start on, so connecting and joining the group
        # do not count as work per event.
        started = await first_starts(ctx, query, bridge)
        cpu_before = bridge.cpu_seconds()
        # Waited for on Kafka, not on Temporal's visibility (``await_committed``).
        pids = {**stack_pids(ctx), "bridge": bridge.pid, "bench": os.getpid()}
        committed = await_committed(ctx.settings, settings.group_id, topic, 120 + count / 20)
        _, cores = await cores_used(pids, committed)
        cpu = bridge.cpu_seconds() - cpu_before
        limit = round(await bridge.gauge("ktb_temporal_in_flight_limit"))
        times = await start_times(ctx.client, query, count, timeout=10)
    finally:
        await bridge.stop()
    if len(times) < count:
        raise RuntimeError(f"the bridge started {len(times)} of {count} workflows")
    rate = answered_rate(times.values(), await last_answer(ctx.settings, provenance, count))
    return rate, cpu / max(1, count - started) * 1e6, cores, limit, span_rate(times.values())


async def direct_cpu(
    ctx: BenchContext, count: int, rate: float, concurrency: int
) -> tuple[float, float]:
    """CPU microseconds per start of a direct caller process, and the rate it reached.

    ``count`` starts paced to ``rate`` per second with ``concurrency`` callers
    (``bench.direct``); the rate is measured on the server side like the others.
    """
    uid = ctx.uid()
    requests = await ordered_requests(ctx, uid, count)
    measured = await run_direct(
        ctx.settings, requests, rate, concurrency, ctx.work_dir, f"direct-{uid}",
        timeout=120 + 2 * count / rate,
    )  # fmt: skip
    times = await start_times(ctx.client, route_query(uid), count, timeout=60)
    if measured.starts != count or len(times) < count:
        raise RuntimeError(
            f"the direct caller made {measured.starts} starts; {len(times)} of {count} listed"
        )
    return measured.cpu_us_per_start, span_rate(times.values())


async def first_starts(ctx: BenchContext, query: str, *bridges: BridgeProcess) -> int:
    """Wait for the bridges' first workflow start; return how many exist by then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for bridge in bridges:
            bridge.check()
        started = (await ctx.client.count_workflows(query)).count
        if started:
            return started
        await asyncio.sleep(0.05)
    raise RuntimeError("no bridge started a workflow within 120 s")


async def sweep(ctx: BenchContext, count: int) -> dict[int, float]:
    """Raw starts per second of ``count`` direct calls at each concurrency of the sweep."""
    concurrencies = (32, 128) if ctx.quick else (16, 64, 256)
    return {c: await raw_rate(ctx, count, c) for c in concurrencies}


def best_concurrency(per_concurrency: dict[int, float]) -> int:
    """The concurrency with the highest raw rate."""
    return max(per_concurrency, key=lambda c: per_concurrency[c])


@dataclass(frozen=True)
class Bracketed:
    """A bridge round's rate and its reference: the mean of the raw rounds just before
    and just after it."""

    rate: float
    reference: float

    @property
    def ratio(self) -> float:
        return ratio(self.rate, self.reference)


def bracketed_rounds(raws: Sequence[float], rates: Sequence[float]) -> list[Bracketed]:
    """Each bridge round with the mean of the raw rounds just before and just after it:
    ``rates[n]`` ran between ``raws[n]`` and ``raws[n + 1]``. The in-memory server's rate
    moves by a third within a minute, so a reference further away measures another
    server."""
    if len(raws) != len(rates) + 1:
        raise ValueError(f"{len(rates)} bridge rounds need {len(rates) + 1} raw rounds beside them")
    return [
        Bracketed(rate, (before + after) / 2)
        for rate, before, after in zip(rates, raws[:-1], raws[1:], strict=True)
    ]


def bracketed(raws: Sequence[float], rates: Sequence[float]) -> list[float]:
    """Each bridge round's rate against the mean of the raw rounds beside it
    (``bracketed_rounds``)."""
    return [round_.ratio for round_ in bracketed_rounds(raws, rates)]


def mean_round(rounds: Sequence[Bracketed]) -> Bracketed:
    """What a headline reports: the mean rate of a side's bridge rounds beside the mean of
    their references, so the two divide to the ratio. Every round counts alike: a single
    round reads from 0.73 to 1.21 of the raw rounds beside it as the in-memory server
    moves, so the best of them would report the server's luck (README, Performance)."""
    if not rounds:
        raise ValueError("no bridge rounds to take the mean of")
    return Bracketed(
        statistics.fmean(r.rate for r in rounds), statistics.fmean(r.reference for r in rounds)
    )


def rounds_note(
    names: Sequence[Sequence[str]], rounds: Sequence[tuple[Sequence[float], Sequence[float]]]
) -> str:
    """Each round in order (``rounds``: per server, its raw rates and its bridge rates, a
    raw round before and after each bridge round; ``names``: per server, its bridge rounds'
    names in order), each bridge round with its ratio to the raw rounds beside it
    (``bracketed``). The order leads the note when every server ran the same one; else each
    bridge round is named where it stands."""
    if len(names) != len(rounds):
        raise ValueError(f"{len(names)} orders of names for {len(rounds)} servers' rounds")
    one_order = all(list(order) == list(names[0]) for order in names)
    parts = []
    for order, (raws, rates) in zip(names, rounds, strict=True):
        sequence = [fmt(raws[0], "/s")]
        for name, rate, share, after in zip(
            order, rates, bracketed(raws, rates), raws[1:], strict=True
        ):
            label = "" if one_order else f"{name} "
            sequence += [f"{label}{fmt(rate, '/s')} ({share:.2f})", fmt(after, "/s")]
        parts.append(" / ".join(sequence))
    if one_order:
        order = " / ".join(["raw", *(part for name in names[0] for part in (name, "raw"))])
        lead = f"rounds in order, {order}"
    else:
        lead = "rounds in order, a raw round before and after each bridge round, named"
    return (
        f"{lead}; ratios against the mean of the raw rounds just before and after each "
        "bridge round: " + ", ".join(parts)
    )


async def run(ctx: BenchContext) -> ScenarioResult:
    """Sweep the raw concurrency, then rounds of raw, bridge at default settings, raw,
    bridge at the raw side's best concurrency, raw; each bridge round against the raw
    rounds just before and after it (``bracketed_rounds``); each side's rounds count
    together, their mean rate beside the mean of their references (``mean_round``).

    The fixed round runs with ``max_in_flight`` set to the raw side's best concurrency
    (the same concurrency on both sides); after each round a direct caller process
    repeats its starts at the fixed round's rate, for the CPU per start of both.
    """
    count = ctx.size(600, 3000)
    rounds = ctx.rounds(1, 2)
    per_concurrency = await sweep(ctx, count // 2)
    best = best_concurrency(per_concurrency)
    raws: list[list[float]] = []
    """Per round, its raw rounds: before, between and after the two bridge rounds."""
    bridges: list[float] = []
    cpu_per_event: list[float] = []
    direct_cpu_per_start: list[float] = []
    direct_rates: list[float] = []
    defaults: list[float] = []
    default_limits: list[int] = []
    """The adaptive limit at the end of each default round."""
    default_rounds: list[Bracketed] = []
    fixed_rounds: list[Bracketed] = []
    """Each bridge round with the mean of the raw rounds beside it, per side."""
    round_cores: list[list[dict[str, float]]] = []
    """Per round, the cores of each part (``ROUND_PARTS``) while starts ran."""
    arrivals: list[list[float]] = []
    """Per round, each part's span rate of its start times alone (``span_rate``)."""
    renewed: list[int] = []
    """The rounds (from 1) that began on a fresh server (``SERVER_ROUNDS``)."""
    for n in range(rounds):
        if await ctx.renew_before_round(n):
            renewed.append(n + 1)
        opening, opening_arrivals, opening_cores = await raw_round(ctx, count, best)
        default_rate, _, default_cores, default_limit, default_arrivals = await bridge_rate(
            ctx, count
        )
        defaults.append(default_rate)
        default_limits.append(default_limit)
        middle, middle_arrivals, middle_cores = await raw_round(ctx, count, best)
        rate, cpu, fixed_cores, _, fixed_arrivals = await bridge_rate(ctx, count, best)
        bridges.append(rate)
        cpu_per_event.append(cpu)
        last, closing_arrivals, closing_cores = await raw_round(ctx, count, best)
        raws.append([opening, middle, last])
        round_cores.append([opening_cores, default_cores, middle_cores, fixed_cores, closing_cores])
        arrivals.append(
            [opening_arrivals, default_arrivals, middle_arrivals, fixed_arrivals, closing_arrivals]
        )
        default_round, fixed_round = bracketed_rounds(raws[-1], [default_rate, rate])
        default_rounds.append(default_round)
        fixed_rounds.append(fixed_round)
        direct_cpu_us, direct_rate = await direct_cpu(ctx, count, rate, best)
        direct_cpu_per_start.append(direct_cpu_us)
        direct_rates.append(direct_rate)
    default_mean, fixed_mean = mean_round(default_rounds), mean_round(fixed_rounds)
    fixed_ratio, default_ratio = fixed_mean.ratio, default_mean.ratio
    default_best = max(v.ratio for v in default_rounds)
    fixed_best = max(v.ratio for v in fixed_rounds)
    raw_best, bridge_best = max(max(parts) for parts in raws), max(bridges)
    bridge_cpu = statistics.fmean(cpu_per_event)
    direct_cpu_us = statistics.fmean(direct_cpu_per_start)
    cpu_ratio = ratio(bridge_cpu, direct_cpu_us)
    cpu_met = cpu_ratio <= CPU_TARGET
    default = ctx.settings.max_in_flight
    return ScenarioResult(
        NAME,
        {
            "raw_per_s": rounded(fixed_mean.reference),
            "bridge_per_s": rounded(fixed_mean.rate),
            "ratio": rounded(fixed_ratio, 3),
            "raw_best_per_s": rounded(raw_best),
            "bridge_best_per_s": rounded(bridge_best),
            "target": f">= {TARGET} at default settings",
            "met": default_ratio >= TARGET,
            "events": count,
            "concurrency": best,
            "rounds": rounds,
            "fresh_server_before_rounds": renewed,
            "raw_sweep_per_s": {str(c): rounded(v) for c, v in per_concurrency.items()},
            "raw_rounds_per_s": [[rounded(v) for v in parts] for parts in raws],
            "bridge_rounds_per_s": [rounded(v) for v in bridges],
            "bridge_cpu_us_per_event": rounded(bridge_cpu),
            "raw_cpu_us_per_start": rounded(direct_cpu_us),
            "cpu_ratio": rounded(cpu_ratio, 2),
            "cpu_target": f"<= {CPU_TARGET}x",
            "cpu_met": cpu_met,
            "bridge_cpu_rounds_us": [rounded(v) for v in cpu_per_event],
            "raw_cpu_rounds_us": [rounded(v) for v in direct_cpu_per_start],
            "raw_paced_rounds_per_s": [rounded(v) for v in direct_rates],
            "bridge_default_max_in_flight": default,
            "bridge_default_per_s": rounded(default_mean.rate),
            "bridge_default_raw_per_s": rounded(default_mean.reference),
            "bridge_default_rounds_per_s": [rounded(v) for v in defaults],
            "bridge_default_end_limits": default_limits,
            "bridge_default_ratio": rounded(default_ratio, 3),
            "bridge_default_round_ratios": [rounded(v.ratio, 3) for v in default_rounds],
            "bridge_round_ratios": [rounded(v.ratio, 3) for v in fixed_rounds],
            "bridge_default_best_round_ratio": rounded(default_best, 3),
            "bridge_best_round_ratio": rounded(fixed_best, 3),
            "round_cores": round_cores,
            "start_time_span_rounds_per_s": [[rounded(v) for v in parts] for parts in arrivals],
            "best_of_ratios": {
                "bridge": rounded(ratio(bridge_best, raw_best), 3),
                "bridge_default": rounded(ratio(max(defaults), raw_best), 3),
            },
        },
        [
            Row(
                f"starts/s ({count:,} events; both at concurrency {best}; mean of {rounds} rounds)",
                fmt(fixed_mean.rate, "/s"),
                fmt(fixed_mean.reference, REFERENCE),
                f"{fixed_ratio:.2f}",
            ),
            Row(
                f"starts/s, bridge at its default settings (adaptive; max_in_flight {default};"
                f" mean of {rounds} rounds)",
                fmt(default_mean.rate, "/s"),
                fmt(default_mean.reference, REFERENCE),
                f"{default_ratio:.2f}",
                f">= {TARGET}",
                default_ratio >= TARGET,
            ),
            Row(
                "process CPU per start (all threads; direct caller paced to the bridge's rate;"
                " mean of the rounds)",
                fmt(bridge_cpu, "us"),
                fmt(direct_cpu_us, "us (direct start_workflow process)"),
                f"{cpu_ratio:.2f}x",
                f"<= {CPU_TARGET}x",
                cpu_met,
            ),
        ],
        [
            "raw sweep: " + ", ".join(f"c={c}: {fmt(v, '/s')}" for c, v in per_concurrency.items()),
            *renewed_note(renewed),
            rounds_note(
                [["bridge at default settings", f"bridge at concurrency {best}"]] * len(raws),
                [(parts, [d, b]) for parts, d, b in zip(raws, defaults, bridges, strict=True)],
            )
            + f"; best round at default settings {default_best:.2f}, at concurrency {best}"
            f" {fixed_best:.2f}",
            "fastest round against the fastest raw round alone: bridge "
            f"{ratio(bridge_best, raw_best):.2f}, default settings "
            f"{ratio(max(defaults), raw_best):.2f}",
            "the span rate of the start times alone (arrivals, not what Temporal persisted:"
            " bench.common.answered_rate), per round, raw / default / raw / fixed / raw: "
            + "; ".join(" / ".join(fmt(v, "/s") for v in parts) for parts in arrivals),
            "the adaptive limit of actions in Temporal at the end of each default round: "
            + ", ".join(str(n) for n in default_limits),
            "cores while the starts ran (2 s of CPU in 1 s = 2 cores), per round: "
            + "; ".join(
                " / ".join(
                    f"{part} {cores_line(cores)}"
                    for part, cores in zip(ROUND_PARTS, parts, strict=True)
                )
                for parts in round_cores
            ),
            "CPU per start, per round (bridge / direct caller at the bridge's rate): "
            + ", ".join(
                f"{fmt(b, 'us')} / {fmt(d, 'us')} at {fmt(rt, '/s')}"
                f" (direct reached {fmt(dr, '/s')})"
                for b, d, rt, dr in zip(
                    cpu_per_event, direct_cpu_per_start, bridges, direct_rates, strict=True
                )
            ),
        ],
    )
