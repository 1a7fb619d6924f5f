"""Bridge memory at steady state with 10,000 events in flight or queued.

A bridge process (default settings: ``max_buffered`` 10,000, ``max_in_flight``
1,024, at most 256 calls in Temporal at once) starts on an empty topic; after a
warm-up event its resident memory is the baseline. Then far more events than it can
start in the sampling window are produced at once, so its buffer fills and stays
full; RSS (``psutil``) and the bridge's own ``ktb_in_flight`` gauge (records fetched
and not done) are sampled while it works through them.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.bridge_process import BridgeProcess
from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    create_topic,
    fmt,
    order_records,
    produce_all,
    ratio,
    rounded,
    route_query,
    start_route,
    start_times,
    write_routes,
)

NAME = "memory"
TARGET_MIB = 200.0
QUEUED = 10_000


async def run(ctx: BenchContext) -> ScenarioResult:
    """Idle RSS, then RSS while at least ``QUEUED`` events are buffered."""
    produced = ctx.size(15_000, 30_000)
    window = ctx.size(10.0, 30.0)
    uid = ctx.uid()
    topic = f"bench-mem-{uid}"
    await create_topic(ctx.settings, topic)
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [start_route(topic, uid)])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    bridge = BridgeProcess(settings, routes, ctx.work_dir / f"bridge-{uid}.log")
    records = order_records(ctx.catalog, uid, produced + 1)
    await bridge.start()
    samples: list[tuple[float, float]] = []
    try:
        await produce_all(ctx.settings, topic, records[:1])
        await start_times(ctx.client, route_query(uid), 1, timeout=120)
        idle = bridge.rss_mib()
        await produce_all(ctx.settings, topic, records[1:])
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            bridge.check()
            samples.append((await bridge.gauge("ktb_in_flight"), bridge.rss_mib()))
            await asyncio.sleep(0.5)
    finally:
        await bridge.stop()
    steady = [rss for queued, rss in samples if queued >= QUEUED]
    most_queued = max(queued for queued, _ in samples)
    peak = max(steady) if steady else max(rss for _, rss in samples)
    met = bool(steady) and peak <= TARGET_MIB
    notes = [
        f"{len(steady)} of {len(samples)} samples had >= {QUEUED:,} events buffered "
        f"(most: {most_queued:,.0f}); median RSS then {fmt(statistics.median(steady), 'MiB')}"
        if steady
        else f"the buffer never held {QUEUED:,} events (most: {most_queued:,.0f})"
    ]
    return ScenarioResult(
        NAME,
        {
            "rss_mib": rounded(peak),
            "idle_rss_mib": rounded(idle),
            "median_steady_rss_mib": rounded(statistics.median(steady)) if steady else None,
            "max_buffered_seen": most_queued,
            "steady_samples": len(steady),
            "target": f"<= {TARGET_MIB:g} MiB",
            "met": met,
            "events_produced": produced,
        },
        [
            Row(
                f"bridge RSS, peak with >= {QUEUED:,} events buffered",
                fmt(peak, "MiB", 1),
                fmt(idle, "MiB (same process idle)", 1),
                f"{ratio(peak, idle):.2f}",
                f"<= {TARGET_MIB:g} MiB",
                met,
            )
        ],
        notes,
    )
