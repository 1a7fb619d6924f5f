"""``make bench``: every scenario on one local stack, a table, and ``bench/results/latest.json``.

    python -m bench                       # every scenario at its full size
    python -m bench --quick               # every scenario at its quick size (each < 1 min)
    python -m bench --scenario latency    # one scenario alone (repeatable)

Kafka and Temporal: ``KTB_KAFKA_BOOTSTRAP`` and ``KTB_TEMPORAL_ADDRESS`` when both
are set; otherwise a stack of the run's own on free ports (Kafka from the Maven
jars, the Temporal dev server in memory), stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
import psutil
import temporalio
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from bench.bridge_process import log_tail
from bench.common import BenchContext, ScenarioResult
from bridge.cli.common import run_loop
from bridge.codec import SchemaCatalog
from bridge.dev.processes import Service
from bridge.dev.stack import KAFKA_VERSION, LocalStack, ensure_search_attributes, free_port
from bridge.routes import RoutesConfig
from bridge.settings import REPO_ROOT, Settings
from bridge.temporal.client import connect_temporal

RESULTS = REPO_ROOT / "bench" / "results" / "latest.json"
Runner = Callable[[BenchContext], Awaitable[ScenarioResult]]


def _module_runner(name: str) -> Runner | None:
    """The ``run`` of ``bench/<name>.py``; ``None`` when that module does not exist."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise
    runner: Runner = module.run
    return runner


# Scenario name → whether it needs Kafka and Temporal. Order is the table's order and
# the run's; with the run's own stack each scenario gets a fresh server (``fresh_server``).
SCENARIOS: dict[str, bool] = {
    "throughput": True,
    "latency": True,
    "scale": True,
    "saga": True,
    "signals": True,
    "windows": True,
    "replay": True,
    "routing": False,
    "memory": True,
    "provenance": True,
    "storefront": True,
}
ON_THE_SERVER_OF = {"latency": "throughput"}
"""Scenarios measured on the server another has just used: latency at half the ceiling
"on a server that has just taken the throughput scenario"."""


def fresh_server(name: str, previous: str | None) -> bool:
    """Whether ``name`` gets a fresh in-memory Temporal server when the run has its own,
    ``previous`` being the last scenario that used the current one (``None``: none has).

    The in-memory dev server keeps every workflow a scenario started and slows as they
    pile up (at the end of a full run its store timed out), so each scenario is measured
    on an empty server, both of its sides on the same one, unless it is measured on the
    server of the scenario that ran just before it (``ON_THE_SERVER_OF``).
    """
    return previous is not None and ON_THE_SERVER_OF.get(name) != previous


@contextlib.asynccontextmanager
async def services(
    work_dir: Path, needed: bool
) -> AsyncIterator[tuple[Settings, str, LocalStack | None]]:
    """Settings for the stack to measure on, how it was obtained, and the stack this run
    started (``None`` when it started none)."""
    kafka_env = os.environ.get("KTB_KAFKA_BOOTSTRAP")
    temporal_env = os.environ.get("KTB_TEMPORAL_ADDRESS")
    if not needed:
        yield Settings(), "none (in-process only)", None
    elif kafka_env and temporal_env:
        await ensure_search_attributes(temporal_env, extra=_route_attributes())
        yield Settings(), f"reused: Kafka {kafka_env}, Temporal {temporal_env}", None
    else:
        stack = LocalStack(
            work_dir / "stack",
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            temporal_port=free_port(),
            headless=True,
            temporal_in_memory=True,
            search_attributes=_route_attributes(),
        )
        print("starting a local Kafka and Temporal (in memory) on free ports ...", flush=True)
        await stack.start()
        try:
            yield (
                Settings(
                    kafka_bootstrap=stack.kafka_bootstrap, temporal_address=stack.temporal_address
                ),
                f"own: Kafka {stack.kafka_bootstrap}, Temporal {stack.temporal_address} in memory",
                stack,
            )
        finally:
            stack.stop()


def _route_attributes() -> dict[str, str]:
    """The search attributes the example routes set (the storefront scenario runs them)."""
    return RoutesConfig.load(REPO_ROOT / "routes.yaml").search_attributes()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def machine(ctx_settings: Settings, stack: str, client: Any) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "temporalio_sdk": temporalio.__version__,
        "aiokafka": aiokafka.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "stack": stack,
    }
    if client is not None:
        system = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        info["temporal_server"] = system.server_version
        info["kafka"] = KAFKA_VERSION if stack.startswith("own") else "external"
    return info


def own_services(local: LocalStack | None) -> Sequence[Service]:
    """The processes of the run's own stack as they are now (a restart renews one)."""
    return [] if local is None else local.services()


def exited(services: Sequence[Service]) -> list[str]:
    """The names of those of ``services`` that are no longer running."""
    return [svc.name for svc in services if not svc.alive()]


def stack_report(services: Sequence[Service], lines: int = 15) -> str:
    """Each of the run's own services: running or its exit code, and its log's last lines."""
    if not services:
        return "this run started no services: the stack's logs are where it runs"
    parts = []
    for svc in services:
        code = None if svc.proc is None else svc.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        parts.append(f"{svc.name} ({state}), {log_tail(svc.log, lines)}")
    return "\n".join(parts)


def table(results: list[ScenarioResult], missing: dict[str, str]) -> str:
    """The results as a Markdown table, baseline beside the bridge's figure."""
    head = ["scenario", "measure", "bridge", "baseline", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for result in results:
        for row in result.rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            cells = [result.name, row.measure, row.bridge, row.baseline, row.ratio, row.target, met]
            lines.append("| " + " | ".join(cells) + " |")
    for name, why in missing.items():
        lines.append(f"| {name} | {why} | | | | | **no** |")
    return "\n".join(lines)


def _json_ready(result: ScenarioResult, date: str, quick: bool) -> dict[str, Any]:
    return {
        **result.metrics,
        "size": "quick" if quick else "full",
        "date": date,
        "elapsed_s": round(result.seconds, 1),
        "notes": result.notes,
    }


async def run(
    names: list[str], quick: bool, out: Path, command: str, rounds: int | None = None
) -> int:
    """Run ``names`` in order; print the table; write (merge into) the results file.

    A scenario that fails is recorded as failed with its error and the run goes on
    with the next, unless a service of the run's own stack has exited: the rest are
    then recorded as not run. After a failure, or an error that ends the run, the run's
    directory (the stack's logs, the bridge processes' logs) is kept and named; a run
    with a failed scenario exits with 1.
    """
    date = datetime.now(UTC).isoformat(timespec="seconds")
    runners = {name: _module_runner(name) for name in names}
    missing = {name: f"bench/{name}.py does not exist" for name, r in runners.items() if r is None}
    failed: dict[str, str] = {}
    needed = any(SCENARIOS[n] for n in names if runners[n] is not None)
    results: list[ScenarioResult] = []
    work_dir = Path(tempfile.mkdtemp(prefix="ktb-bench-"))
    try:
        async with services(work_dir, needed) as (settings, stack, local):
            # The run's own in-memory server, renewed between scenarios (``fresh_server``).
            renewable = local is not None and local.temporal is not None
            client = await connect_temporal(settings) if needed else None
            ctx = BenchContext(
                settings=settings,
                catalog=SchemaCatalog.from_dir(settings.schemas_dir),
                client=client,  # type: ignore[arg-type]
                quick=quick,
                rounds_wanted=rounds,
                work_dir=work_dir,
                machine=await machine(settings, stack, client),
                stack=local,
            )
            if renewable:
                ctx.machine["temporal_server_per_scenario"] = (
                    "fresh (in memory); latency on the server throughput used"
                )
            print(_machine_line(ctx.machine), flush=True)
            previous: str | None = None  # the last scenario that used the current server
            for name, runner in runners.items():
                if runner is None:
                    print(f"[{name}] missing: {missing[name]}", flush=True)
                    continue
                gone = exited(own_services(local))
                if gone:
                    failed[name] = f"not run: the stack's {', '.join(gone)} had exited"
                    print(f"[{name}] {failed[name]}", flush=True)
                    continue
                print(f"[{name}] running ({'quick' if quick else 'full'} size) ...", flush=True)
                try:
                    if SCENARIOS[name] and renewable:
                        if fresh_server(name, previous):
                            print(f"[{name}] on a fresh in-memory Temporal server", flush=True)
                            await ctx.renew_server()
                        previous = name
                    started = time.monotonic()
                    retried_before = ctx.retried_calls
                    result = await runner(ctx)
                    retried = ctx.retried_calls - retried_before
                    if retried:
                        result.metrics["raw_calls_retried"] = retried
                        result.notes.append(
                            f"{retried:,} direct start call(s) tried again after a transient"
                            " error from Temporal (bench.throughput.start_with_retries)"
                        )
                except Exception as exc:  # one scenario's failure is reported, not the run's end
                    failed[name] = f"failed: {type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    report = stack_report(own_services(local))
                    print(f"[{name}] {failed[name]}\n{report}", flush=True)
                    continue
                result.seconds = time.monotonic() - started
                ctx.results[name] = result
                results.append(result)
                for row in result.rows:
                    print(f"[{name}] {row.measure}: {row.bridge} vs {row.baseline}", flush=True)
                print(f"[{name}] done in {result.seconds:.0f} s", flush=True)
    except BaseException:
        print(f"\nkept: {work_dir} (the stack's and the bridges' logs)", file=sys.stderr)
        raise
    if failed:
        print(f"\nkept for the failure: {work_dir} (the stack's and the bridges' logs)")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    print()
    print(table(results, {**missing, **failed}))
    for result in results:
        for note in result.notes:
            print(f"- {result.name}: {note}")
    document: dict[str, Any] = {
        "date": date,
        "command": command,
        "size": "quick" if quick else "full",
        "machine": ctx.machine,
    }
    for result in results:
        document[result.name] = _json_ready(result, date, quick)
    for name, why in missing.items():
        document[name] = {"status": "missing", "reason": why, "date": date}
    for name, why in failed.items():
        document[name] = {"status": "failed", "reason": why, "date": date, "kept": str(work_dir)}
    write(out, document)
    print(f"\nwrote {out}")
    return 1 if failed else 0


def write(path: Path, document: dict[str, Any]) -> None:
    """Write the run's results, keeping the last figures of scenarios this run skipped."""
    merged: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            merged = loaded
    merged.update(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")


def _machine_line(info: dict[str, Any]) -> str:
    return (
        f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"Kafka {info.get('kafka', 'n/a')}, Temporal server {info.get('temporal_server', 'n/a')}"
        f", load average {info['load_average_at_start']}; stack: {info['stack']}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario at its quick size")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file to write")
    parser.add_argument(
        "--rounds",
        type=_positive,
        help="rounds of the scenarios that run rounds (throughput, scale, signals, windows);"
        " more rounds give a firmer mean on a server whose rate moves",
    )
    args = parser.parse_args(argv)
    names = [n for n in SCENARIOS if n in (args.scenario or SCENARIOS)]
    command = "make bench" + (" QUICK=1" if args.quick else "")
    if args.scenario:
        command += f" SCENARIO={','.join(names)}" if len(names) > 1 else f" SCENARIO={names[0]}"
    if args.rounds:
        command += f" ROUNDS={args.rounds}"
    sys.exit(run_loop(run(names, args.quick, args.out.resolve(), command, args.rounds)))


def _positive(text: str) -> int:
    """A whole number of at least 1, or a clear error naming the option's value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} rounds: at least 1")
    return value
