"""``ktb replay``, ``ktb replay-status``, ``ktb replay-worker`` and ``ktb dlq list|show|redrive``.

Exit codes: 0 done, 1 Kafka or Temporal failed (or redrive refused letters),
2 bad input (range, topic, partition, route, selection) with nothing acted on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from bridge.errors import BridgeError, ConfigError, InvalidRequestError
from bridge.observability import logs
from bridge.settings import Settings

if TYPE_CHECKING:  # the replay package loads lazily, per command
    from bridge.replay import ReplayCheckpoint, ReplayPlan, ReplayReport

dlq_app = typer.Typer(help="Inspect and redrive dead-letter topics.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the replay and dead-letter commands to the ``ktb`` app."""
    app.command("replay")(replay)
    app.command("replay-status")(replay_status)
    app.command("replay-worker")(replay_worker)
    app.add_typer(dlq_app, name="dlq")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    _done(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        _fail(f"invalid settings: {exc}")


def _quiet_ingress(settings: Settings) -> None:
    """Log setup for replays: the report is the output, not a log line per record."""
    logs.setup(settings.log_level, console=True)
    logging.getLogger("ktb.ingress").setLevel(logging.WARNING)


def _console_process() -> bool:
    """True when this process is ``ktb`` itself, not a program calling the commands in-process."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return (spec is not None and spec.name == "bridge.__main__") or Path(sys.argv[0]).name == "ktb"


def _done(code: int = 0) -> NoReturn:
    """End a command that used a Temporal client.

    The SDK's native threads can abort the interpreter while it finalizes
    (temporalio/sdk-python#300: "PyGILState_Release ... finalizing"), turning a
    finished command into exit code 134. The ``ktb`` process therefore ends here,
    output flushed and logging shut down, without finalizing.
    """
    if _console_process():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    raise typer.Exit(code)


def _run(coro: Any) -> Any:
    """Run ``coro``; bad input exits 2, other bridge errors 1."""
    try:
        return asyncio.run(coro)
    except InvalidRequestError as exc:
        _fail(exc.message, 2)
    except ConfigError as exc:
        _fail(exc.message, 2)
    except BridgeError as exc:
        _fail(exc.message, 1)


# --- replay ---------------------------------------------------------------------------------


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

    settings = _settings(routes_file=routes, replay_concurrency=concurrency)
    _quiet_ingress(settings)
    try:
        replay_mode = ReplayMode(mode)
    except ValueError:
        _fail(f"--mode must be idempotent or fresh, not {mode!r}")
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
    plan: ReplayPlan = _run(_check(settings, request, resolve_plan))
    if background:
        replay_id = _run(_start_background(settings, plan))
        if as_json:
            typer.echo(json.dumps({"replay_id": replay_id, "total": plan.total}))
        else:
            typer.echo(replay_id)
            typer.echo(f"follow it with: ktb replay-status {replay_id}", err=True)
        _done()
    started = time.monotonic()
    bar = ProgressBar(plan.total) if sys.stderr.isatty() and not as_json else None
    try:
        report: ReplayReport = _run(_foreground(settings, plan, bar))
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
    _done()


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

    settings = _settings()

    async def fetch() -> Any:
        return await status_of(await connect_temporal(settings), replay_id)

    status = _run(fetch())
    if status is None:
        _fail(f"no replay {replay_id!r}")
    typer.echo(json.dumps(asdict(status)))
    _done()


def replay_worker() -> None:
    """Run the worker of replay workflows (task queue KTB_REPLAY_TASK_QUEUE, ktb-replay)."""
    from bridge.replay import run_replay_worker

    settings = _settings()
    logs.setup(settings.log_level, console=settings.log_format == "console")
    logging.getLogger("ktb.ingress").setLevel(logging.WARNING)
    _run(run_replay_worker(settings))
    _done()


# --- dead letters -----------------------------------------------------------------------------


def _refs(offsets: list[str] | None) -> list[Any]:
    from bridge.dlq import LetterRef

    out = []
    for item in offsets or []:
        for part in item.split(","):
            if part.strip():
                try:
                    out.append(LetterRef.parse(part))
                except InvalidRequestError as exc:
                    _fail(exc.message)
    return out


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    error_type: Annotated[str | None, typer.Option(help="Only this ktb_error_type")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter")] = False,
) -> None:
    """List dead letters: offset, error type and message, original coordinates, redrives."""
    from bridge.dlq import Letter, iter_letters

    settings = _settings()

    def show_page(letters: list[Letter], first: bool) -> None:
        if first and not as_json:
            typer.echo(
                f"{'LETTER':>8}  {'ERROR TYPE':17}  {'ORIGINAL':28}  {'REDRIVES':8}  MESSAGE"
            )
        for letter in letters:
            s = letter.summary()
            if as_json:
                typer.echo(json.dumps(s))
                continue
            where = f"{s['original_topic']}[{s['original_partition']}]@{s['original_offset']}"
            redriven = s["redriven"]
            count = str(s["redrive_count"]) + (" ->" if redriven else "")
            message = (s["error_message"] or "").replace("\n", " ")
            if not letter.holds_record:
                message = f"[{s['original_error_type']}: {s['original_error_message']}] {message}"
            if redriven:
                message = (
                    f"[redriven to {redriven['topic']}[{redriven['partition']}]"
                    f"@{redriven['offset']}] {message}"
                )
            if s["copy_of"]:
                message = f"[copy of {s['copy_of']}] {message}"
            error = s["error_type"] or "-"
            typer.echo(f"{letter.ref!s:>8}  {error:17}  {where:28}  {count:8}  {message[:120]}")

    async def list_all() -> int:
        # A page at a time: the memory of a listing does not grow with the topic.
        listed = 0
        async for letters in iter_letters(settings, topic, error_type=error_type):
            show_page(letters, listed == 0)
            listed += len(letters)
        return listed

    if not _run(list_all()) and not as_json:
        typer.echo(f"{topic}: no dead letters" + (f" of type {error_type}" if error_type else ""))


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    offset: Annotated[str, typer.Argument(help="OFFSET or PARTITION:OFFSET")],
) -> None:
    """Print one dead letter as JSON: error, original coordinates, headers, decoded data.

    A too_large_to_copy letter holds no record: the record is read from its original
    topic at the letter's coordinates (original_record says whether it is still there).
    """
    from bridge.codec import SchemaCatalog
    from bridge.dlq import show

    settings = _settings()
    refs = _refs([offset])
    if len(refs) != 1:
        _fail("give one letter: OFFSET or PARTITION:OFFSET")
    (ref,) = refs
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    typer.echo(json.dumps(_run(show(settings, topic, ref, catalog)), indent=2, default=str))


@dlq_app.command("redrive")
def dlq_redrive(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    error_type: Annotated[str | None, typer.Option(help="Only letters of this error type")] = None,
    offsets: Annotated[
        list[str] | None,
        typer.Option("--offsets", help="Only these letters: OFFSET or PARTITION:OFFSET, commas"),
    ] = None,
    max_redrives: Annotated[
        int | None, typer.Option(help="Refuse letters redriven this often (KTB_DLQ_MAX_REDRIVES)")
    ] = None,
    again: Annotated[
        bool, typer.Option("--again", help="Also republish letters an earlier redrive sent")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Republish dead letters to their original topics with ktb_redrive_count incremented."""
    from bridge.dlq import redrive

    settings = _settings()
    refs = _refs(offsets)
    report = _run(
        redrive(
            settings, topic, error_type=error_type, refs=refs, max_redrives=max_redrives,
            again=again,
        )
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        typer.echo(
            f"{topic}: {report.selected} selected, {len(report.redriven)} redriven, "
            f"{len(report.refused)} refused, {len(report.already)} already redriven"
            + (f", {len(report.copies)} copies skipped" if report.copies else "")
        )
        for mark in report.redriven:
            typer.echo(
                f"  {mark.dlq_partition}:{mark.dlq_offset} -> "
                f"{mark.topic}[{mark.partition}]@{mark.offset} (redrive {mark.redrive_count})"
            )
        for refused in report.refused:
            typer.echo(f"  {refused['letter']} refused: {refused['reason']}")
    if report.refused:
        raise typer.Exit(1)
