"""Signal throughput: bridge-driven signals against direct ``handle.signal``, same concurrency.

Both sides signal their own set of ``K`` running workflows, ``S / K`` signals each,
one after another per workflow (the bridge keeps one key's events in order, so K
keys give it K concurrent signals; the direct side runs K callers, one per
workflow). The payload is what the bridge sends: the event id, type, tenant and
the event data. Both rates are read from the server: the span between the first
and the last ``WorkflowExecutionSignaled`` event in the workflows' histories.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.bridge_process import BridgeProcess
from bench.common import (
    CONFIRMED,
    BenchContext,
    Row,
    ScenarioResult,
    create_topic,
    encode,
    fmt,
    payment_confirmed,
    produce_all,
    ratio,
    rounded,
    span_rate,
    write_routes,
)
from bridge.codec import SchemaCatalog
from bridge.envelope import KafkaRecord

NAME = "signals"
TARGET = 0.95
SIGNAL = "payment_confirmed"


async def start_targets(ctx: BenchContext, uid: str, count: int) -> list[str]:
    """Start ``count`` workflows to signal (no worker runs them; signals are still recorded)."""
    ids = [f"bench-sig-{uid}-{k:04d}" for k in range(count)]
    await asyncio.gather(
        *(
            ctx.client.start_workflow("BenchOrder", {}, id=wf_id, task_queue=f"bench-{uid}")
            for wf_id in ids
        )
    )
    return ids


def signal_records(catalog: SchemaCatalog, uid: str, keys: int, per_key: int) -> list[KafkaRecord]:
    """``per_key`` payment.confirmed events for each of ``keys`` orders, interleaved."""
    return [
        encode(catalog, CONFIRMED, payment_confirmed(f"{k:04d}", n), key=f"{uid}-{k:04d}")
        for n in range(per_key)
        for k in range(keys)
    ]


async def signal_times(ctx: BenchContext, ids: list[str]) -> list[float]:
    """When the server recorded each signal of these workflows (seconds since the epoch)."""
    out: list[float] = []
    for wf_id in ids:
        history = await ctx.client.get_workflow_handle(wf_id).fetch_history()
        out += [
            e.event_time.seconds + e.event_time.nanos / 1e9
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
    return out


async def raw_rate(ctx: BenchContext, uid: str, ids: list[str], per_key: int) -> float:
    """Signals per second of one caller per workflow, each signalling its workflow in turn."""
    keys = len(ids)
    payloads = [
        {
            "event_id": f"{uid}-{k}-{n}",
            "event_type": CONFIRMED,
            "tenant_id": None,
            "payload": payment_confirmed(f"{k:04d}", n),
        }
        for k in range(keys)
        for n in range(per_key)
    ]

    async def caller(k: int) -> None:
        handle = ctx.client.get_workflow_handle(ids[k])
        for n in range(per_key):
            await handle.signal(SIGNAL, payloads[k * per_key + n])

    await asyncio.gather(*(caller(k) for k in range(keys)))
    return span_rate(await signal_times(ctx, ids))


async def bridge_rate(ctx: BenchContext, uid: str, ids: list[str], per_key: int) -> float:
    """Signals per second through a bridge process; the events are on the topic already."""
    keys = len(ids)
    topic = f"bench-sig-{uid}"
    route = {
        "name": f"bench-signal-{uid}",
        "topic": topic,
        "type": CONFIRMED,
        "action": "signal",
        "workflow_id": f"bench-sig-{uid}-{{data.order_id}}",
        "signal": SIGNAL,
    }
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [route])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    bridge = BridgeProcess(settings, routes, ctx.work_dir / f"bridge-{uid}.log")
    total = keys * per_key
    await bridge.start()
    try:
        deadline = time.monotonic() + 120 + total / 20
        while await _signalled(bridge) < total:
            bridge.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge signalled {await _signalled(bridge)} of {total}")
            await asyncio.sleep(0.5)
    finally:
        await bridge.stop()
    return span_rate(await signal_times(ctx, ids))


async def _signalled(bridge: BridgeProcess) -> float:
    samples = (await bridge.metrics()).get("ktb_events_routed_total", [])
    return sum(value for labels, value in samples if labels.get("result") == "signalled")


async def run(ctx: BenchContext) -> ScenarioResult:
    """Rounds of direct signals and the bridge, the side that goes first alternating from
    round to round (the server slows as histories grow, so the second side of a round
    would always meet a busier server); the mean of the rounds on each side."""
    keys = ctx.size(50, 100)
    per_key = ctx.size(20, 40)
    rounds = ctx.rounds(1, 4)
    raws: list[float] = []
    bridges: list[float] = []
    for n in range(rounds):
        # Both sides' workflows and events exist before either side is timed.
        raw_uid, bridge_uid = ctx.uid(), ctx.uid()
        raw_ids = await start_targets(ctx, raw_uid, keys)
        bridge_ids = await start_targets(ctx, bridge_uid, keys)
        topic = f"bench-sig-{bridge_uid}"
        await create_topic(ctx.settings, topic)
        await produce_all(
            ctx.settings, topic, signal_records(ctx.catalog, bridge_uid, keys, per_key)
        )
        if n % 2 == 0:
            raws.append(await raw_rate(ctx, raw_uid, raw_ids, per_key))
            bridges.append(await bridge_rate(ctx, bridge_uid, bridge_ids, per_key))
        else:
            bridges.append(await bridge_rate(ctx, bridge_uid, bridge_ids, per_key))
            raws.append(await raw_rate(ctx, raw_uid, raw_ids, per_key))
    raw, bridge = statistics.fmean(raws), statistics.fmean(bridges)
    r = ratio(bridge, raw)
    metrics: dict[str, Any] = {
        "ratio": rounded(r, 3),
        "raw_per_s": rounded(raw),
        "bridge_per_s": rounded(bridge),
        "target": f">= {TARGET}",
        "met": r >= TARGET,
        "signals": keys * per_key,
        "concurrency": keys,
        "rounds": rounds,
        "raw_rounds_per_s": [rounded(v) for v in raws],
        "bridge_rounds_per_s": [rounded(v) for v in bridges],
        "best_of_ratio": rounded(ratio(max(bridges), max(raws)), 3),
    }
    return ScenarioResult(
        NAME,
        metrics,
        [
            Row(
                f"signals/s ({keys * per_key:,} signals, {keys} workflows at once;"
                f" mean of {rounds} rounds)",
                fmt(bridge, "/s"),
                fmt(raw, "/s (direct handle.signal, mean of its rounds)"),
                f"{r:.2f}",
                f">= {TARGET}",
                r >= TARGET,
            )
        ],
    )
