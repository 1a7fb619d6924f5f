"""Debounce and batch throughput: events per second into windows against plain starts.

The same ``N`` order.placed events (distinct keys, so the bridge works on many at
once) go through three bridge processes in turn, on the same server and with the
same worker: a plain ``start`` route (one run per event), a ``debounce`` route and
a ``batch`` route over ``GROUPS`` workflow ids (one collector each). A bridge's
rate is what it commits: the span from its first to its last committed offset, an
event being done once Temporal accepted its start (plain) or holds it in its
window (a signal-with-start of the collector). The windowed rounds then wait until
the target runs received every event, each once, and report how many runs that
took. One worker in this process runs every workflow of the three rounds: the
plain round's runs, the collectors and the windows' runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.bridge_process import BridgeProcess
from bench.common import (
    PLACED,
    BenchContext,
    Row,
    ScenarioResult,
    create_topic,
    encode,
    fmt,
    order_id,
    order_placed,
    produce_all,
    ratio,
    rounded,
    write_routes,
)
from bridge import kafka
from bridge.envelope import KafkaRecord
from bridge.sdk.window import with_collector
from bridge.settings import Settings

NAME = "windows"
GROUPS = 40
PARTITIONS = 6
TARGET = 1.0
MODES: dict[str, dict[str, Any]] = {
    "start": {},
    "debounce": {"debounce": {"period": "1s", "max_wait": "10s"}},
    "batch": {"batch": {"max_events": 100, "max_wait": "2s"}},
}


@workflow.defn(name="BenchWindowRun")
class WindowRun:
    """A plain start's run (one event) or a window's run (a list): how many events it got."""

    @workflow.run
    async def run(self, received: Any) -> int:
        """The number of events this run received."""
        return len(received) if isinstance(received, list) else 1


def records(ctx: BenchContext, uid: str, count: int) -> list[KafkaRecord]:
    """``count`` orders with distinct keys, spread over ``GROUPS`` customers."""
    out = []
    for n in range(count):
        data = {**order_placed(order_id(uid, n)), "customer_id": f"c{n % GROUPS:03d}"}
        out.append(encode(ctx.catalog, PLACED, data, key=order_id(uid, n)))
    return out


def route(topic: str, uid: str, mode: str) -> dict[str, Any]:
    """The round's route: one run per event, or per customer window."""
    per_event = mode == "start"
    return {
        "name": f"bench-{mode}-{uid}",
        "topic": topic,
        "type": PLACED,
        "action": "start",
        "workflow": "BenchWindowRun",
        "task_queue": f"bench-win-{uid}",
        "workflow_id": f"bench-{uid}-{{data.order_id}}"
        if per_event
        else f"bench-{uid}-{{data.customer_id}}",
        **MODES[mode],
    }


async def committed(settings: Settings, topic: str) -> int:
    """How many records of ``topic`` the round's consumer group has committed."""
    consumer = kafka.consumer(settings, group_id=settings.group_id)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum([await consumer.committed(tp) or 0 for tp in tps])
    finally:
        await consumer.stop()


async def commit_rate(settings: Settings, topic: str, count: int, bridge: BridgeProcess) -> float:
    """Events per second between the first and the last commit the bridge made."""
    deadline = time.monotonic() + 120 + count / 20
    first: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        bridge.check()
        done = await committed(settings, topic)
        now = time.monotonic()
        if done and first is None:
            first = (now, done)
        if done >= count and first is not None:
            return (count - first[1]) / max(now - first[0], 1e-3)
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the bridge committed {await committed(settings, topic)} of {count}")


async def delivered(client: Client, task_queue: str, count: int) -> int:
    """Wait until the completed runs received ``count`` events; return how many runs."""
    deadline = time.monotonic() + 120
    query = f"TaskQueue = '{task_queue}' AND WorkflowType = 'BenchWindowRun'"
    while time.monotonic() < deadline:
        runs = [
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).result()
            async for wf in client.list_workflows(query)
            if wf.status is WorkflowExecutionStatus.COMPLETED
        ]
        if sum(runs) > count:
            raise RuntimeError(f"runs received {sum(runs)} events of {count}: some twice")
        if sum(runs) == count:
            return len(runs)
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the runs did not receive all {count} events within 120 s")


async def one_round(ctx: BenchContext, mode: str, count: int) -> tuple[float, int]:
    """One bridge process over ``count`` events of ``mode``: its rate and the runs started."""
    uid = ctx.uid()
    topic = f"bench-win-{mode}-{uid}"
    await create_topic(ctx.settings, topic, PARTITIONS)
    await produce_all(ctx.settings, topic, records(ctx, uid, count))
    routes = write_routes(ctx.work_dir / f"routes-{uid}.yaml", [route(topic, uid, mode)])
    settings = ctx.settings.model_copy(update={"group_id": f"bench-{uid}"})
    env = {"KTB_COMMIT_INTERVAL_S": "0.1"}
    bridge = BridgeProcess(settings, routes, ctx.work_dir / f"bridge-{uid}.log", env)
    task_queue = f"bench-win-{uid}"
    async with Worker(
        ctx.client,
        task_queue=task_queue,
        workflows=with_collector([WindowRun]),
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        await bridge.start()
        try:
            rate = await commit_rate(settings, topic, count, bridge)
        finally:
            await bridge.stop()
        runs = await delivered(ctx.client, task_queue, count)
    return rate, runs


async def run(ctx: BenchContext) -> ScenarioResult:
    """The three routes in turn, the plain start first, best of the rounds each."""
    count = ctx.size(1000, 4000)
    rounds = ctx.rounds(1, 2)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    runs: dict[str, int] = {}
    for _ in range(rounds):
        for mode in MODES:
            rate, runs[mode] = await one_round(ctx, mode, count)
            rates[mode].append(rate)
    best = {mode: max(values) for mode, values in rates.items()}
    start = best["start"]
    rows = [Row(f"plain start, events/s ({count:,} events)", fmt(start, "/s"), "", "1.00")]
    for mode in ("debounce", "batch"):
        r = ratio(best[mode], start)
        rows.append(
            Row(
                f"{mode}, events/s ({GROUPS} ids, {runs[mode]} runs)",
                fmt(best[mode], "/s"),
                fmt(start, "/s"),
                f"{r:.2f}",
                f">= {TARGET}",
                r >= TARGET,
            )
        )
    return ScenarioResult(
        NAME,
        {
            "events": count,
            "groups": GROUPS,
            "rounds": rounds,
            **{f"{mode}_per_s": rounded(best[mode]) for mode in MODES},
            **{f"{mode}_rounds_per_s": [rounded(v) for v in rates[mode]] for mode in MODES},
            **{f"{mode}_runs": runs[mode] for mode in MODES},
            "debounce_ratio": rounded(ratio(best["debounce"], start), 3),
            "batch_ratio": rounded(ratio(best["batch"], start), 3),
            "target": f">= {TARGET}",
        },
        rows,
        [
            "rate: the span between the bridge's first and last committed offset; "
            "the baseline is the plain start route over the same events, same worker",
        ],
    )
