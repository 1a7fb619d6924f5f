"""Replay figures: idempotent replay of processed events vs raw duplicate starts; dry-run rate.

1. N order.placed events on a topic of their own are processed once (a replay in
   idempotent mode starts their workflows; a worker in this process closes them).
2. The baseline: ``client.start_workflow`` of the same, existing ids with the
   same reuse/conflict policies and the same concurrency a replay uses — the raw
   duplicate-start rate of this Temporal server, measured in this run.
3. An idempotent replay of the range: every record read from Kafka, decoded and
   routed as the live bridge does; starts of ids that exist are answered by
   batched visibility lookups (``ReplayDispatcher``), so all are duplicates.
4. Dry runs of a larger range (20,000 events; 50,000 at full size): decoded and
   routed, nothing acted on.

Baseline and replay alternate (``rounds`` each) and the medians are compared, so
load from anything else on the machine falls on both. Runs against
``KTB_KAFKA_BOOTSTRAP``/``KTB_TEMPORAL_ADDRESS``::

    KTB_KAFKA_BOOTSTRAP=localhost:19092 KTB_TEMPORAL_ADDRESS=localhost:17233 \\
        .venv/bin/python -m bench.replay --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.envelope import encode_event
from bridge.kafka import ensure_topics
from bridge.replay import (
    ReplayPlan,
    ReplayReport,
    ReplayRequest,
    ReplayRunner,
    replay_ingress,
    resolve_plan,
)
from bridge.settings import Settings
from bridge.temporal.client import connect_temporal

NAME = "replay"
PLACED = "com.example.order.placed"
TARGET_RATIO = 1.0
TARGET_DRY_RUN = 20_000.0


@workflow.defn(name="KtbBenchReplayNoop")
class Noop:
    """Returns at once: the processes of the benchmark's events close right away."""

    @workflow.run
    async def run(self, order: dict[str, Any]) -> str:
        """Done."""
        return str(order["order_id"])


@dataclass
class ReplayFigures:
    """What one benchmark run measured (rates in events per second)."""

    events: int
    concurrency: int
    raw_duplicate_rates: list[float] = field(default_factory=list)
    replay_rates: list[float] = field(default_factory=list)
    dry_run_rates: list[float] = field(default_factory=list)
    dry_run_events: int = 0
    duplicates_per_replay: list[int] = field(default_factory=list)

    @property
    def raw(self) -> float:
        """Median raw duplicate-start rate."""
        return statistics.median(self.raw_duplicate_rates)

    @property
    def replay(self) -> float:
        """Median idempotent replay rate."""
        return statistics.median(self.replay_rates)

    @property
    def dry_run(self) -> float:
        """Median dry-run rate."""
        return statistics.median(self.dry_run_rates)

    @property
    def ratio(self) -> float:
        """Idempotent replay rate over the raw duplicate-start rate."""
        return self.replay / self.raw

    def summary(self) -> dict[str, Any]:
        """The figures as JSON-ready data."""
        return {
            **asdict(self),
            "raw_duplicate_rate": round(self.raw, 1),
            "idempotent_replay_rate": round(self.replay, 1),
            "ratio": round(self.ratio, 3),
            "dry_run_rate": round(self.dry_run, 1),
            "dry_run_per_s": round(self.dry_run, 1),
            "targets": {"ratio": TARGET_RATIO, "dry_run_rate": TARGET_DRY_RUN},
        }


def order(order_id: str) -> dict[str, Any]:
    """A valid order.placed payload."""
    return {
        "order_id": order_id,
        "customer_id": f"cust-{order_id}",
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price_cents": 1250}],
        "total_cents": 2500,
        "currency": "EUR",
        "payment_token": "tok_visa",
    }


async def produce(settings: Settings, catalog: SchemaCatalog, topic: str, ids: list[str]) -> None:
    """One order.placed per id (key = id), as fast as the producer takes them."""
    producer = kafka.producer(settings, linger_ms=5)
    await producer.start()
    try:
        sends = []
        for order_id in ids:
            record = encode_event(
                catalog, type=PLACED, data=order(order_id), id=str(uuid.uuid4()),
                source="bench", key=order_id,
            )  # fmt: skip
            sends.append(
                await producer.send(
                    topic, value=record.value, key=record.key, headers=record.headers
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def timed_replay(
    settings: Settings, client: Client | None, plan: ReplayPlan
) -> tuple[float, ReplayReport]:
    """Seconds the runner took to read and act on the plan (clients built beforehand)."""
    async with replay_ingress(settings, plan.request, client=client) as ingress:
        runner = ReplayRunner(settings, ingress, plan)
        started = time.perf_counter()
        report = await runner.run()
        return time.perf_counter() - started, report


async def raw_duplicates(
    client: Client, ids: list[str], task_queue: str, concurrency: int
) -> float:
    """Seconds for ``client.start_workflow`` of every (existing) id, ``concurrency`` at once."""
    slots = asyncio.Semaphore(concurrency)
    duplicates = 0

    async def start(workflow_id: str, order_id: str) -> None:
        nonlocal duplicates
        async with slots:
            try:
                handle = await client.start_workflow(
                    "KtbBenchReplayNoop",
                    order(order_id),
                    id=workflow_id,
                    task_queue=task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                )
            except WorkflowAlreadyStartedError:
                duplicates += 1
                return
            if not getattr(handle._start_workflow_response, "started", True):
                duplicates += 1

    started = time.perf_counter()
    await asyncio.gather(*(start(f"{task_queue}-{i}", i) for i in ids))
    elapsed = time.perf_counter() - started
    if duplicates != len(ids):
        raise RuntimeError(f"baseline started {len(ids) - duplicates} new workflows")
    return elapsed


def routes(topic: str, task_queue: str) -> dict[str, Any]:
    """The example domain's start route (condition, id template, data as the argument).

    The same route reads ``<topic>-dry``, the dry runs' range.
    """
    return {
        "routes": [
            {
                "name": f"{task_queue}-start-{suffix}",
                "topic": topic + suffix,
                "type": PLACED,
                "when": "data.total_cents > 0",
                "action": "start",
                "workflow": "KtbBenchReplayNoop",
                "task_queue": task_queue,
                "workflow_id": f"{task_queue}-{{data.order_id}}",
                "args": "data",
            }
            for suffix in ("", "-dry")
        ],
        "unmatched": "skip",
    }


async def measure(
    settings: Settings,
    client: Client,
    *,
    events: int,
    concurrency: int,
    rounds: int,
    dry_events: int = 20_000,
    log: Any = print,
) -> ReplayFigures:
    """Set up and process once, then alternate baseline and replay; dry runs last."""
    from bench.common import provenance_topic

    uid = uuid.uuid4().hex[:8]
    topic = task_queue = f"bench-replay-{uid}"
    with tempfile.TemporaryDirectory(prefix="ktb-bench-replay-") as tmp:
        routes_file = Path(tmp) / "routes.yaml"
        routes_file.write_text(json.dumps(routes(topic, task_queue)))
        settings = settings.model_copy(
            update={
                "routes_file": routes_file,
                "replay_concurrency": concurrency,
                "provenance_topic": provenance_topic(uid),
            }
        )
        catalog = SchemaCatalog.from_dir(settings.schemas_dir)
        await ensure_topics(settings, {topic: 6, f"{topic}.dlq": 1, settings.provenance_topic: 3})
        ids = [f"{n:06d}" for n in range(events)]
        await produce(settings, catalog, topic, ids)
        plan = await resolve_plan(settings, ReplayRequest(topic, "earliest"))
        figures = ReplayFigures(events, concurrency, dry_run_events=dry_events)

        log(f"processing {events} events once (starting their workflows) ...")
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[Noop],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            seconds, report = await timed_replay(settings, client, plan)
            log(f"  started {report.started} in {seconds:.1f}s; waiting for them to close")
            for _ in range(3):
                if not report.dead_lettered:
                    break
                # An overloaded server can reject a start outright; another pass starts
                # what is missing (the rest are duplicates).
                log(f"  {report.dead_lettered} dead-lettered; processing the range again")
                seconds, report = await timed_replay(settings, client, plan)
            await _all_closed(client, task_queue, events)

        for n in range(rounds):
            seconds = await raw_duplicates(client, ids, task_queue, concurrency)
            figures.raw_duplicate_rates.append(events / seconds)
            seconds, report = await timed_replay(settings, client, plan)
            if report.duplicates != events or report.started:
                raise RuntimeError(f"idempotent replay was not all duplicates: {report}")
            figures.replay_rates.append(events / seconds)
            figures.duplicates_per_replay.append(report.duplicates)
            log(
                f"  round {n + 1}: raw duplicate starts {figures.raw_duplicate_rates[-1]:,.0f}/s,"
                f" idempotent replay {figures.replay_rates[-1]:,.0f}/s"
            )

        # Dry runs are fast: a range of their own, large enough that starting the
        # consumer does not dominate the figure.
        dry_topic = f"{topic}-dry"
        await ensure_topics(settings, {dry_topic: 6, f"{dry_topic}.dlq": 1})
        await produce(settings, catalog, dry_topic, [f"{n:07d}" for n in range(dry_events)])
        dry_plan = await resolve_plan(settings, ReplayRequest(dry_topic, "earliest", dry_run=True))
        for _ in range(rounds):
            seconds, report = await timed_replay(settings, None, dry_plan)
            if report.would_act != dry_events:
                raise RuntimeError(f"dry run did not plan every event: {report}")
            figures.dry_run_rates.append(dry_events / seconds)
        log(f"  dry runs: {', '.join(f'{r:,.0f}/s' for r in figures.dry_run_rates)}")
    return figures


async def _all_closed(client: Client, task_queue: str, events: int, timeout: float = 600) -> None:
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Completed'"
    deadline = time.monotonic() + timeout
    while (await client.count_workflows(query)).count < events:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {events} workflows did not close within {timeout}s")
        await asyncio.sleep(0.5)


async def run(ctx: Any) -> Any:
    """The ``replay`` scenario of ``python -m bench`` (``bench/run.py``)."""
    from bench.common import Row, ScenarioResult, fmt

    figures = await measure(
        ctx.settings,
        ctx.client,
        events=ctx.size(500, 5000),
        concurrency=ctx.settings.replay_concurrency,
        rounds=ctx.size(2, 3),
        dry_events=ctx.size(20_000, 50_000),
    )
    rows = [
        Row(
            "idempotent replay of processed events (events/s)",
            fmt(figures.replay),
            f"{fmt(figures.raw)} raw duplicate starts",
            f"{figures.ratio:.2f}",
            f">= {TARGET_RATIO:.1f}",
            figures.ratio >= TARGET_RATIO,
        ),
        Row(
            "dry run (events/s)",
            fmt(figures.dry_run),
            "",
            "",
            f">= {TARGET_DRY_RUN:,.0f}",
            figures.dry_run >= TARGET_DRY_RUN,
        ),
    ]
    return ScenarioResult(NAME, figures.summary(), rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.replay [--quick]``: print the figures and a JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="1,000 events (20,000 for dry runs), 2 rounds"
    )
    parser.add_argument("--events", type=int, help="events to replay (default 5,000)")
    parser.add_argument(
        "--concurrency", type=int, help="records in flight (KTB_REPLAY_CONCURRENCY)"
    )
    parser.add_argument("--rounds", type=int, help="baseline/replay rounds (default 3)")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=logging.WARNING)

    async def go() -> ReplayFigures:
        client = await connect_temporal(settings)
        return await measure(
            settings,
            client,
            events=args.events or (1000 if args.quick else 5000),
            concurrency=args.concurrency or settings.replay_concurrency,
            rounds=args.rounds or (2 if args.quick else 3),
            dry_events=20_000 if args.quick else 50_000,
        )

    figures = asyncio.run(go())
    print(
        f"idempotent replay {figures.replay:,.0f} events/s vs raw duplicate starts "
        f"{figures.raw:,.0f}/s: ratio {figures.ratio:.2f} (target >= {TARGET_RATIO})"
    )
    print(f"dry run {figures.dry_run:,.0f} events/s (target >= {TARGET_DRY_RUN:,.0f})")
    print(json.dumps(figures.summary()))


if __name__ == "__main__":
    main(sys.argv[1:])
