"""Scale-out: one bridge process, and two in one consumer group, against raw starts.

N order events with distinct keys (spread over the partitions by the producer's
key hash) are produced to a fresh 6-partition topic; then one bridge process
(``ktb bridge``, default settings) starts their workflows; in a round of the other
kind, the same number of events on a fresh topic are read by two bridge processes
in one fresh consumer group. Both rates are measured as in the throughput scenario:
from the first start time Temporal recorded to the moment the last call was answered
(from both bridges' provenance items on the round's own topic,
``bench.common.last_answer``). The raw
ceiling is direct ``start_workflow`` calls (``bench.throughput.raw_round``) at
the throughput scenario's best concurrency in this run (swept here when that
scenario did not run), on the same server, in a raw round just before and just
after each bridge round: raw, 1 bridge, raw, 2 bridges, raw, 2 bridges, raw,
1 bridge, raw on a server (the kinds' order alternates from round to round and from
server to server, ``round_order``), each raw round between two bridge rounds serving
both. Each bridge round is compared with the mean of its two neighbours
(``bench.throughput.bracketed``): the in-memory server's rate moves by a third within
a minute with nothing else running, so a reference two rounds away measures another
server. A full run takes ``FULL_ROUNDS`` rounds of each kind, ``SERVER_ROUNDS`` to a
server: each further ``SERVER_ROUNDS`` run on a fresh in-memory server (when the run
started its own), after a raw round of their own. The rounds of each kind count
together: their mean rate beside the mean of their references
(``bench.throughput.mean_round``).

The two processes are launched at the same moment, after the events are in the
topic, and their rebalance is part of the measured span. The group's first
member may get every partition and start work alone (at once when the broker's
``group.initial.rebalance.delay.ms`` is 0, as on the local stack); the second
member's join makes the first hand half of them over when it next heartbeats
(every 3 s by default), finishing or abandoning what it has in flight and
committing. The span begins with the first start either process made, so the
time one worked alone and the hand-over both count. Starts a process repeats
after the hand-over (Temporal answers them as duplicates: the id exists) are
counted and reported.

After each round every expected workflow id must be listed exactly once, and
nothing else: the scenario fails otherwise. Every round, raw ones too, records the cores
each process used while its starts ran (the run's own Temporal and Kafka, this process,
the bridge processes together): whether a second process costs the machine more than
the first.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from dataclasses import dataclass

from bench.bridge_process import BridgeProcess
from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    answered_rate,
    await_committed,
    await_count,
    check_starts,
    cores_line,
    cores_used,
    create_topic,
    executions,
    fmt,
    last_answer,
    order_records,
    produce_all,
    provenance_topic,
    ratio,
    renewed_note,
    rounded,
    route_query,
    route_workflow_ids,
    stack_pids,
    start_route,
    write_routes,
)
from bench.throughput import (
    REFERENCE,
    Bracketed,
    best_concurrency,
    bracketed_rounds,
    first_starts,
    mean_round,
    raw_round,
    rounds_note,
    sweep,
)

NAME = "scale"
PARTITIONS = 6
TARGET = 0.95
FULL_ROUNDS = 4
"""Rounds of each kind in a full run, on two servers (``SERVER_ROUNDS`` each): the
headline is their mean, and a single 2-bridge round reads from 0.73 to 1.21 of the raw
rounds beside it, so two rounds would still leave it to the server's luck."""


def round_order(server: int, place: int) -> tuple[int, int]:
    """The bridge rounds of a server's round ``place`` (from 0) on the run's ``server``
    (from 0), as instance counts in the order they run.

    The order alternates from round to round, and each server opens with the order its
    predecessor did not: 1, 2 then 2, 1 on the first server, 2, 1 then 1, 2 on the next.
    The in-memory server's rate has a shape along its rounds (a direct round in the 4th
    place read 0.82 of the raw rounds beside it, in the 2nd place 0.98:
    ``bench/RESULTS.md``), so one fixed order would charge that shape to one kind; this
    way the two kinds' mean places on a server match, and over two servers each kind
    takes each place as often as the other.
    """
    return (1, 2) if (place + server) % 2 == 0 else (2, 1)


def bridge_name(instances: int) -> str:
    """How the notes name a round of ``instances`` bridges."""
    return f"{instances} bridge{'s' if instances > 1 else ''}"


@dataclass(frozen=True)
class BridgeShare:
    """One bridge process's part of a round, from its first start to the round's end."""

    events: int
    cpu_s: float
    rebalances: int
    repeated: int

    @property
    def cpu_us_per_event(self) -> float:
        """Process CPU microseconds per event this process handled."""
        return self.cpu_s / self.events * 1e6 if self.events else math.nan


@dataclass(frozen=True)
class Round:
    """What one round of ``instances`` bridge processes measured."""

    instances: int
    per_s: float
    seconds: float
    cpu_window_s: float
    bridges: tuple[BridgeShare, ...]
    cores: dict[str, float]
    """The cores the stack's own processes and this one used from the first start to the
    last commit (``cores_used``); the bridges' are ``bridge_cores``."""

    @property
    def bridge_cores(self) -> float:
        """The cores the bridge processes used together from the first start to the last
        commit."""
        return sum(b.cpu_s for b in self.bridges) / self.cpu_window_s

    @property
    def cpu_us_per_event(self) -> float:
        """All processes' CPU microseconds per event handled."""
        events = sum(b.events for b in self.bridges)
        return sum(b.cpu_s for b in self.bridges) / events * 1e6 if events else math.nan

    def summary(self) -> dict[str, object]:
        """The round for the results file."""
        return {
            "per_s": rounded(self.per_s),
            "seconds": rounded(self.seconds, 2),
            "cpu_us_per_event": rounded(self.cpu_us_per_event),
            "bridge_cores": rounded(self.bridge_cores, 3),
            "cores": self.cores,
            "bridges": [
                {
                    "events": b.events,
                    "cpu_us_per_event": rounded(b.cpu_us_per_event),
                    "cpu_s_per_s": rounded(b.cpu_s / self.cpu_window_s, 3),
                    "rebalances": b.rebalances,
                    "repeated_starts": b.repeated,
                }
                for b in self.bridges
            ],
        }


def kind_summary(rounds: list[Round]) -> dict[str, object]:
    """The rounds of one kind for the results file: their means (each round alike), each
    bridge process's CPU per event and share of a core among them (``bridge_rounds``
    holds every round)."""
    processes = [(b, d.cpu_window_s) for d in rounds for b in d.bridges]
    return {
        "rounds": len(rounds),
        "per_s": rounded(statistics.fmean(d.per_s for d in rounds)),
        "cpu_us_per_event": rounded(statistics.fmean(d.cpu_us_per_event for d in rounds)),
        "bridge_cores": rounded(statistics.fmean(d.bridge_cores for d in rounds), 3),
        "cpu_s_per_s": rounded(statistics.fmean(b.cpu_s / window for b, window in processes), 3),
    }


async def _handled(bridge: BridgeProcess) -> float:
    return await bridge.total("ktb_events_routed_total")


async def _share(bridge: BridgeProcess, handled_before: float, cpu_s: float) -> BridgeShare:
    return BridgeShare(
        events=round(await _handled(bridge) - handled_before),
        cpu_s=cpu_s,
        rebalances=round(await bridge.total("ktb_rebalances_total")),
        repeated=round(await bridge.total("ktb_events_routed_total", result="duplicate")),
    )


async def bridges_round(ctx: BenchContext, count: int, instances: int) -> Round:
    """``count`` events produced first, then started by ``instances`` bridges in one group.

    Raises ``RuntimeError`` unless every event's workflow was started exactly once.
    """
    uid = ctx.uid()
    topic = f"bench-scale-{uid}"
    await create_topic(ctx.settings, topic, PARTITIONS)
    await produce_all(ctx.settings, topic, order_records(ctx.catalog, uid, count))
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [start_route(topic, uid)])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    provenance = provenance_topic(uid)
    bridges = [
        BridgeProcess(
            settings,
            routes,
            ctx.work_dir / f"bridge-{uid}-{n}.log",
            {"KTB_PROVENANCE_TOPIC": provenance},
        )
        for n in range(instances)
    ]
    query = route_query(uid)
    try:
        # Launched together; a failure to come up stops the other's start too.
        async with asyncio.TaskGroup() as group:
            for bridge in bridges:
                group.create_task(bridge.start())
        await first_starts(ctx, query, *bridges)
        cpu_before = [bridge.cpu_seconds() for bridge in bridges]
        window_start = time.monotonic()
        handled_before = [await _handled(bridge) for bridge in bridges]
        # Waited for on Kafka, not on Temporal's visibility (``await_committed``).
        committed = await_committed(
            ctx.settings, settings.group_id, topic, timeout=120 + count / 20
        )
        behind, cores = await cores_used({**stack_pids(ctx), "bench": os.getpid()}, committed)
        cpu = [
            bridge.cpu_seconds() - before
            for bridge, before in zip(bridges, cpu_before, strict=True)
        ]
        window = time.monotonic() - window_start
        shares = tuple(
            [
                await _share(bridge, handled, cpu_s)
                for bridge, handled, cpu_s in zip(bridges, handled_before, cpu, strict=True)
            ]
        )
    finally:
        await asyncio.gather(*(bridge.stop() for bridge in bridges))
    await await_count(ctx.client, query, count, timeout=10)  # visibility catches up
    listed = await executions(ctx.client, query)
    expected = route_workflow_ids(uid, uid, count)
    check = check_starts(expected, (workflow_id for workflow_id, _ in listed))
    check.raise_unless_exactly_once(
        f"scale, {instances} bridge process(es), {behind} records left uncommitted"
    )
    times = [started for _, started in listed]
    end = await last_answer(ctx.settings, provenance, count)
    return Round(instances, answered_rate(times, end), end - min(times), window, shares, cores)


def _of_kind(
    paired: list[tuple[Round, Bracketed]], instances: int
) -> tuple[list[Round], list[Bracketed]]:
    """The rounds of ``instances`` bridges, and their comparisons, in the order they ran."""
    kind = [(d, c) for d, c in paired if d.instances == instances]
    return [d for d, _ in kind], [c for _, c in kind]


async def run(ctx: BenchContext) -> ScenarioResult:
    """Raw starts, then per round one bridge and two bridges (in ``round_order``), each
    followed by raw starts; each bridge round against the mean of the raw rounds beside it
    (``bracketed_rounds``), the rounds of each kind together: their mean rate beside the
    mean of their references (``mean_round``)."""
    count = ctx.size(1200, 6000)
    rounds = ctx.rounds(1, FULL_ROUNDS)
    notes = []
    earlier = ctx.results.get("throughput")
    if earlier is not None and earlier.metrics.get("concurrency"):
        concurrency = int(earlier.metrics["concurrency"])
    else:
        per_concurrency = await sweep(ctx, count // 2)
        concurrency = best_concurrency(per_concurrency)
        notes.append(
            "raw concurrency swept here: "
            + ", ".join(f"c={c}: {fmt(v, '/s')}" for c, v in per_concurrency.items())
        )
    segments: list[tuple[list[float], list[Round]]] = []
    """Per server: its raw rounds in order, one before each bridge round and one after
    it, and its bridge rounds in order (``round_order``)."""
    renewed: list[int] = []
    """The rounds (from 1) that began on a fresh server (``SERVER_ROUNDS``)."""
    raw_cores: list[dict[str, float]] = []
    """The cores of each raw round, in the order they ran (``raw_round``)."""

    async def raw_once() -> float:
        rate, _, cores = await raw_round(ctx, count, concurrency)
        raw_cores.append(cores)
        return rate

    for n in range(rounds):
        if not segments or await ctx.renew_before_round(n):
            if segments:
                renewed.append(n + 1)
            segments.append(([await raw_once()], []))
        segment_raws, segment_rounds = segments[-1]
        for instances in round_order(len(segments) - 1, len(segment_rounds) // 2):
            segment_rounds.append(await bridges_round(ctx, count, instances))
            segment_raws.append(await raw_once())
    done = [d for _, segment_rounds in segments for d in segment_rounds]
    raws = [r for segment_raws, _ in segments for r in segment_raws]
    compared = [
        c
        for segment_raws, segment_rounds in segments
        for c in bracketed_rounds(segment_raws, [d.per_s for d in segment_rounds])
    ]
    notes += renewed_note(renewed)
    paired = list(zip(done, compared, strict=True))
    ones, one_compared = _of_kind(paired, 1)
    twos, two_compared = _of_kind(paired, 2)
    one_ratios = [c.ratio for c in one_compared]
    two_ratios = [c.ratio for c in two_compared]
    one_mean, two_mean = mean_round(one_compared), mean_round(two_compared)
    raw = max(raws)
    r, one_ratio = two_mean.ratio, one_mean.ratio
    met = r >= TARGET
    notes.append(
        rounds_note(
            [[bridge_name(d.instances) for d in segment_rounds] for _, segment_rounds in segments],
            [
                (segment_raws, [d.per_s for d in segment_rounds])
                for segment_raws, segment_rounds in segments
            ],
        )
        + f"; best round 1 bridge {max(one_ratios):.2f}, 2 bridges {max(two_ratios):.2f}"
        f"; fastest rounds against the fastest raw round alone: 1 bridge "
        f"{ratio(max(x.per_s for x in ones), raw):.2f}, "
        f"2 bridges {ratio(max(x.per_s for x in twos), raw):.2f}"
    )
    notes.append(
        "two bridges, per round: "
        + "; ".join(
            f"events handled {' / '.join(f'{b.events:,}' for b in d.bridges)} (from the first "
            f"start), rebalances {' / '.join(str(b.rebalances) for b in d.bridges)}"
            for d in twos
        )
        + f"; repeated starts {sum(b.repeated for d in done for b in d.bridges)} in all rounds"
        "; every workflow started exactly once in every round"
    )
    parts, raw_order = [], iter(raw_cores)
    for _, segment_rounds in segments:
        parts.append(f"raw {cores_line(next(raw_order))}")
        for d in segment_rounds:
            parts.append(
                f"{bridge_name(d.instances)}: bridges {d.bridge_cores:.2f}, {cores_line(d.cores)}"
            )
            parts.append(f"raw {cores_line(next(raw_order))}")
    notes.append(
        "cores from the first start to the last answer (raw) or commit (bridges), in order"
        " (2 s of CPU in 1 s = 2 cores; bridges: the bridge processes together): "
        + "; ".join(parts)
    )
    notes.append(
        "bridge CPU per event, per round in order (each process; the round's ratio): "
        + ", ".join(
            f"{bridge_name(d.instances)} "
            f"{' / '.join(fmt(b.cpu_us_per_event, 'us') for b in d.bridges)} ({c.ratio:.2f})"
            for d, c in paired
        )
    )
    return ScenarioResult(
        NAME,
        {
            "one_per_s": rounded(one_mean.rate),
            "two_per_s": rounded(two_mean.rate),
            "raw_per_s": rounded(two_mean.reference),
            "ratio": rounded(r, 3),
            "one_raw_per_s": rounded(one_mean.reference),
            "one_ratio": rounded(one_ratio, 3),
            "raw_best_per_s": rounded(raw),
            "target": f">= {TARGET}",
            "met": met,
            "events": count,
            "partitions": PARTITIONS,
            "raw_concurrency": concurrency,
            "rounds": rounds,
            "fresh_server_before_rounds": renewed,
            "exactly_once": True,
            "one": kind_summary(ones),
            "two": kind_summary(twos),
            "one_rounds_per_s": [rounded(x.per_s) for x in ones],
            "two_rounds_per_s": [rounded(x.per_s) for x in twos],
            "raw_rounds_per_s": [rounded(x) for x in raws],
            "raw_rounds_cores": raw_cores,
            "one_round_ratios": [rounded(x, 3) for x in one_ratios],
            "two_round_ratios": [rounded(x, 3) for x in two_ratios],
            "two_best_round_ratio": rounded(max(two_ratios), 3),
            "one_best_round_ratio": rounded(max(one_ratios), 3),
            "bridge_rounds": [
                {"instances": d.instances, "ratio": rounded(c.ratio, 3), **d.summary()}
                for d, c in paired
            ],
        },
        [
            Row(
                f"events/s, 1 bridge ({count:,} events, {PARTITIONS} partitions;"
                f" mean of {len(ones)} rounds)",
                fmt(one_mean.rate, "/s"),
                fmt(one_mean.reference, REFERENCE),
                f"{one_ratio:.2f}",
            ),
            Row(
                f"events/s, 2 bridges in one group (rebalance included; mean of {len(twos)}"
                " rounds)",
                fmt(two_mean.rate, "/s"),
                fmt(two_mean.reference, REFERENCE),
                f"{r:.2f}",
                f">= {TARGET}",
                met,
            ),
        ],
        notes,
    )
