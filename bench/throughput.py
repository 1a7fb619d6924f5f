"""Start throughput: the bridge against direct ``client.start_workflow`` on the same server.

Raw ceiling: this process calls ``client.start_workflow`` with the very request the
bridge would send for each event (workflow type, deterministic id, the event data
as argument, the bridge's memo and search attributes, the same id policies), at
the best of several concurrencies. Bridge: the same number of events is produced
to a topic first, then a bridge process (``run_bridge``, as ``ktb bridge``) starts
them, with ``max_in_flight`` equal to the raw side's best concurrency; one more
round shows the bridge at its default ``max_in_flight``. Both rates are measured
the same way, on the server side: the span between the first and the last
workflow start time Temporal recorded. No worker polls the task queues, so the
server's effort per start is the same on both sides.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from bench.bridge_process import BridgeProcess
from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    consumer_record,
    create_topic,
    fmt,
    order_records,
    produce_all,
    ratio,
    rounded,
    span_rate,
    start_route,
    start_times,
    write_routes,
)
from bridge.ingress import Ingress
from bridge.routes import Router, RoutesConfig
from bridge.temporal.requests import event_memo, search_attributes

NAME = "throughput"
TARGET = 0.9


def start_requests(ctx: BenchContext, topic: str, uid: str, count: int) -> list[dict[str, Any]]:
    """The ``start_workflow`` keyword arguments the bridge sends for ``count`` events.

    Built by decoding and routing real records through the bridge's own router,
    before any timing starts, so the raw side pays nothing the bridge does not.
    """
    router = Router(RoutesConfig.parse({"routes": [start_route(topic, uid)]}))
    ingress = Ingress(ctx.catalog, router, None, None)
    requests = []
    for offset, record in enumerate(order_records(ctx.catalog, uid, count)):
        event, action = ingress.plan(consumer_record(topic, offset, record))
        assert action is not None
        requests.append(
            {
                "workflow": action.workflow_type,
                "args": list(action.args),
                "id": action.workflow_id,
                "task_queue": action.task_queue,
                "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
                "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
                "search_attributes": search_attributes(event, action),
                "memo": {"ktb": event_memo(event, action.route)},
            }
        )
    return requests


async def raw_rate(ctx: BenchContext, count: int, concurrency: int) -> float:
    """Starts per second of direct ``start_workflow`` calls at ``concurrency``."""
    uid = ctx.uid()
    requests = start_requests(ctx, f"bench-raw-{uid}", uid, count)
    queue = iter(requests)

    async def caller() -> None:
        for request in queue:
            await ctx.client.start_workflow(request.pop("workflow"), **request)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    times = await start_times(ctx.client, f"TaskQueue = 'bench-{uid}'", count, timeout=60)
    return span_rate(times.values())


async def bridge_rate(
    ctx: BenchContext, count: int, max_in_flight: int | None = None
) -> tuple[float, float]:
    """Starts per second through a bridge process, and its CPU microseconds per event.

    ``max_in_flight`` sets ``KTB_MAX_IN_FLIGHT``; ``None`` keeps the default.
    """
    uid = ctx.uid()
    topic = f"bench-tp-{uid}"
    await create_topic(ctx.settings, topic)
    await produce_all(ctx.settings, topic, order_records(ctx.catalog, uid, count))
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [start_route(topic, uid)])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    env = {} if max_in_flight is None else {"KTB_MAX_IN_FLIGHT": str(max_in_flight)}
    bridge = BridgeProcess(settings, routes, ctx.work_dir / f"bridge-{uid}.log", env)
    query = f"TaskQueue = 'bench-{uid}'"
    await bridge.start()
    try:
        # CPU is counted from the first start on, so connecting and joining the group
        # do not count as work per event.
        started = await _first_starts(ctx, bridge, query)
        cpu_before = bridge.cpu_seconds()
        times = await start_times(ctx.client, query, count, timeout=120 + count / 20)
        cpu = bridge.cpu_seconds() - cpu_before
    finally:
        await bridge.stop()
    if len(times) < count:
        raise RuntimeError(f"the bridge started {len(times)} of {count} workflows")
    return span_rate(times.values()), cpu / max(1, count - started) * 1e6


async def _first_starts(ctx: BenchContext, bridge: BridgeProcess, query: str) -> int:
    """Wait for the bridge's first workflow start; return how many exist by then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        bridge.check()
        started = (await ctx.client.count_workflows(query)).count
        if started:
            return started
        await asyncio.sleep(0.05)
    raise RuntimeError("the bridge started no workflow within 120 s")


async def run(ctx: BenchContext) -> ScenarioResult:
    """Sweep the raw concurrency, then alternate raw and bridge rounds; best of each.

    The bridge runs with ``max_in_flight`` set to the raw side's best concurrency
    (the same concurrency on both sides). One more bridge round with the default
    ``max_in_flight`` shows what the default does on this server.
    """
    count = ctx.size(600, 3000)
    sweep = (32, 128) if ctx.quick else (16, 64, 256)
    rounds = 1 if ctx.quick else 2
    per_concurrency = {c: await raw_rate(ctx, count // 2, c) for c in sweep}
    best = max(per_concurrency, key=lambda c: per_concurrency[c])
    raws: list[float] = []
    bridges: list[float] = []
    cpu_per_event: list[float] = []
    for _ in range(rounds):
        raws.append(await raw_rate(ctx, count, best))
        rate, cpu = await bridge_rate(ctx, count, best)
        bridges.append(rate)
        cpu_per_event.append(cpu)
    default_rate, _ = await bridge_rate(ctx, count)
    raw, bridge = max(raws), max(bridges)
    r = ratio(bridge, raw)
    default = ctx.settings.max_in_flight
    return ScenarioResult(
        NAME,
        {
            "raw_per_s": rounded(raw),
            "bridge_per_s": rounded(bridge),
            "ratio": rounded(r, 3),
            "target": f">= {TARGET}",
            "met": r >= TARGET,
            "events": count,
            "concurrency": best,
            "raw_sweep_per_s": {str(c): rounded(v) for c, v in per_concurrency.items()},
            "raw_rounds_per_s": [rounded(v) for v in raws],
            "bridge_rounds_per_s": [rounded(v) for v in bridges],
            "bridge_cpu_us_per_event": rounded(min(cpu_per_event)),
            "bridge_default_max_in_flight": default,
            "bridge_default_per_s": rounded(default_rate),
            "bridge_default_ratio": rounded(ratio(default_rate, raw), 3),
        },
        [
            Row(
                f"starts/s ({count:,} events; both at concurrency {best})",
                fmt(bridge, "/s"),
                fmt(raw, "/s"),
                f"{r:.2f}",
                f">= {TARGET}",
                r >= TARGET,
            ),
            Row(
                f"starts/s, bridge at its default max_in_flight {default}",
                fmt(default_rate, "/s"),
                fmt(raw, "/s"),
                f"{ratio(default_rate, raw):.2f}",
            ),
        ],
        [
            "raw sweep: " + ", ".join(f"c={c}: {fmt(v, '/s')}" for c, v in per_concurrency.items()),
            f"bridge process CPU per event: {fmt(min(cpu_per_event), 'us')}",
        ],
    )
