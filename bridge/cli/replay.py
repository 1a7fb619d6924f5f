"""``ktb replay``, ``ktb replay-status`` and ``ktb replay-worker``.

Exit codes: 0 done, 1 Kafka or Temporal failed, 2 bad input (range, topic,
partition, route) with nothing replayed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bridge.cli.common import done, fail, load_settings, run
from bridge.observability import logs
from bridge.settings import Settings

if TYPE_CHECKING:  # the replay package loads lazily, per command
    from bridge.replay import ReplayCheckpoint, ReplayPlan, ReplayReport


def register(app: typer.Typer) -> None:
    """Add the replay commands to the ``ktb`` app."""
    app.command("replay")(replay)
    app.command("replay-status")(replay_status)
    app.command("replay-worker")(replay_worker)


def _quiet_ingress(settings: Settings) -> None:
    """Log setup for replays: the report is the output, not a log line per record."""
    logs.setup(settings.log_level, console=True)
    logging.getLogger("ktb.ingress").setLevel(logging.WARNING)


class ProgressBar:
    """Records done / total, rate and ETA on one redrawn line of a terminal."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.shown = False

    def update(self, checkpoint: ReplayCheckpoint) -> None:
        """Redraw for a checkpoint."""
        from bridge.replay import progress_line

        line = progress_line(checkpoint.done, self.total, time.monotonic() - self.started)
        self.stream.write("\r" + line)
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """End the line."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def render_report(plan: ReplayPlan, report: ReplayReport, elapsed: float) -> str:
    """The report as ``ktb replay`` prints it."""
    request = plan.request
    ranges = ", ".join(f"{r.partition}:{r.start}..{r.end}" for r in plan.ranges)
    lines = [
        f"replay of {request.topic} [{ranges}] mode={request.mode.value}"
        + (" (dry run: nothing was acted on)" if request.dry_run else ""),
    ]
    if request.id_suffix:
        lines.append(f"generation: {request.generation} (workflow ids end in {request.id_suffix})")
    counters = report.counters()
    if not request.dry_run:
        counters.pop("would_act")
    lines.append("  ".join(f"{k.replace('_', '-')} {v}" for k, v in counters.items()))
    rate = report.read / elapsed if elapsed > 0 else 0.0
    lines.append(f"{report.read} records in {elapsed:.2f}s ({rate:,.0f} rec/s)")
    if report.per_route:
        lines.append("per route" + (" (what would happen):" if request.dry_run else ":"))
        for route, tally in sorted(report.per_route.items()):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
            example = report.examples.get(route)
            lines.append(f"  {route}: {counts}" + (f"  (e.g. {example})" if example else ""))
    return "\n".join(lines)


def replay(
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to replay")],
    from_: Annotated[
        str, typer.Option("--from", help="First record: offset, ISO-8601 time or 'earliest'")
    ],
    to: Annotated[
        str, typer.Option("--to", help="End, exclusive: offset, ISO-8601 time or 'now'")
    ] = "now",
    partition: Annotated[
        list[int] | None, typer.Option("--partition", "-p", help="Partition (repeat; default all)")
    ] = None,
    route: Annotated[
        list[str] | None, typer.Option("--route", help="Only this route (repeat; default all)")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="idempotent: live workflow ids; fresh: new ids, processes rerun")
    ] = "idempotent",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Act on nothing; report")] = False,
    background: Annotated[
        bool, typer.Option("--background", help="Run as a replay workflow; print its id")
    ] = False,
    routes: Annotated[
        Path | None, typer.Option(help="Routes file (default KTB_ROUTES_FILE)")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Temporal actions at once (KTB_REPLAY_CONCURRENCY)")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0, help="At most this many records per second")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Replay a range of a topic through the bridge's routes (no consumer group is used).

    Ranges are [--from, --to) per partition. Offsets, ISO-8601 times (UTC when no
    offset is given) and 'earliest'/'now' may be mixed.
    """
    from bridge.replay import ReplayMode, ReplayRequest, resolve_plan

    settings = load_settings(routes_file=routes, replay_concurrency=concurrency)
    _quiet_ingress(settings)
    try:
        replay_mode = ReplayMode(mode)
    except ValueError:
        fail(f"--mode must be idempotent or fresh, not {mode!r}")
    request = ReplayRequest(
        topic=topic,
        start=from_,
        end=to,
        partitions=list(partition or []),
        routes=list(route or []),
        mode=replay_mode,
        dry_run=dry_run,
        rate_limit=rate or 0.0,
    ).with_generation()
    plan: ReplayPlan = run(_check(settings, request, resolve_plan))
    if background:
        replay_id = run(_start_background(settings, plan))
        if as_json:
            typer.echo(json.dumps({"replay_id": replay_id, "total": plan.total}))
        else:
            typer.echo(replay_id)
            typer.echo(f"follow it with: ktb replay-status {replay_id}", err=True)
        done()
    started = time.monotonic()
    bar = ProgressBar(plan.total) if sys.stderr.isatty() and not as_json else None
    try:
        report: ReplayReport = run(_foreground(settings, plan, bar))
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - started
    if as_json:
        out = {
            "topic": topic,
            "mode": replay_mode.value,
            "dry_run": dry_run,
            "generation": request.generation or None,
            "ranges": [asdict(r) for r in plan.ranges],
            "elapsed_s": round(elapsed, 3),
            **asdict(report),
        }
        typer.echo(json.dumps(out))
    else:
        typer.echo(render_report(plan, report, elapsed))
    done()


async def _check(settings: Settings, request: Any, resolve: Any) -> ReplayPlan:
    """Resolve the range and check the route names before anything is acted on."""
    from bridge.replay import replay_router

    plan: ReplayPlan = await resolve(settings, request)
    replay_router(settings, request.routes)
    return plan


async def _foreground(settings: Settings, plan: ReplayPlan, bar: ProgressBar | None) -> Any:
    from bridge.replay import run_replay
    from bridge.temporal.client import connect_temporal

    client = None if plan.request.dry_run else await connect_temporal(settings)
    return await run_replay(
        settings, plan, client=client, on_progress=bar.update if bar is not None else None
    )


async def _start_background(settings: Settings, plan: ReplayPlan) -> str:
    from bridge.replay import start_replay
    from bridge.temporal.client import connect_temporal

    return await start_replay(await connect_temporal(settings), settings, plan)


def replay_status(
    replay_id: Annotated[str, typer.Argument(help="Id printed by `ktb replay --background`")],
) -> None:
    """Print a background replay's state, progress and report as JSON."""
    from bridge.replay import replay_status as status_of
    from bridge.temporal.client import connect_temporal

    settings = load_settings()

    async def fetch() -> Any:
        return await status_of(await connect_temporal(settings), replay_id)

    status = run(fetch())
    if status is None:
        fail(f"no replay {replay_id!r}")
    typer.echo(json.dumps(asdict(status)))
    done()


def replay_worker() -> None:
    """Run the worker of replay workflows (task queue KTB_REPLAY_TASK_QUEUE, ktb-replay)."""
    from bridge.replay import run_replay_worker

    settings = load_settings()
    logs.setup(settings.log_level, console=settings.log_format == "console")
    logging.getLogger("ktb.ingress").setLevel(logging.WARNING)
    run(run_replay_worker(settings))
    done()
