"""A direct ``client.start_workflow`` caller in an OS process of its own: CPU per start.

    python -m bench.direct REQUESTS RESULT --rate 250 --concurrency 64

The throughput scenario runs it to measure the direct caller's CPU per start the
way it measures the bridge process's: process CPU times (user + system of every
thread, the Temporal SDK's Rust core included; psutil), over the same number of
starts at the same rate and concurrency as the bridge round just measured, on the
same server. REQUESTS holds the ``start_workflow`` keyword arguments the parent
built with ``bench.throughput.ordered_requests`` (pickled) before anything is
timed. The process connects with the bridge's own ``connect_temporal`` to
``KTB_TEMPORAL_ADDRESS``, then makes every start through ``bench.common.paced``;
its CPU time is counted from just before the first start to just after the last
one returned, and written to RESULT as JSON with the number of starts and the
seconds they took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.bridge_process import log_tail, spawn
from bench.common import paced, stack_env
from bridge.cli.common import run_loop
from bridge.dev.processes import stop_group
from bridge.settings import Settings
from bridge.temporal.client import connect_temporal


class DirectCallerError(RuntimeError):
    """The direct caller failed or timed out; the message ends with its log."""


@dataclass(frozen=True)
class DirectRun:
    """What a direct caller measured: its starts, its CPU seconds and wall seconds for them."""

    starts: int
    cpu_s: float
    seconds: float

    @property
    def cpu_us_per_start(self) -> float:
        """Process CPU microseconds per start."""
        return self.cpu_s / max(1, self.starts) * 1e6


async def call(
    settings: Settings, requests: list[dict[str, Any]], rate: float, concurrency: int
) -> DirectRun:
    """Connect, then make every start at ``rate`` per second with ``concurrency`` callers."""
    client = await connect_temporal(settings)
    process = psutil.Process()

    async def start(request: dict[str, Any]) -> None:
        await client.start_workflow(request.pop("workflow"), **request)

    before = process.cpu_times()
    started = time.perf_counter()
    starts = await paced(requests, start, rate, concurrency)
    seconds = time.perf_counter() - started
    after = process.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return DirectRun(starts=starts, cpu_s=cpu, seconds=seconds)


async def run_direct(
    settings: Settings,
    requests: list[dict[str, Any]],
    rate: float,
    concurrency: int,
    work_dir: Path,
    name: str,
    timeout: float,
) -> DirectRun:
    """Run a direct caller process for ``requests``; its measurement once it has exited.

    Its log is ``work_dir/<name>.log``; it is killed after ``timeout`` seconds.
    """
    requests_file = work_dir / f"{name}.requests.pickle"
    result_file = work_dir / f"{name}.result.json"
    log = work_dir / f"{name}.log"
    requests_file.write_bytes(pickle.dumps(requests))
    args = [str(requests_file), str(result_file), f"--rate={rate}", f"--concurrency={concurrency}"]
    proc = await spawn(["bench.direct", *args], stack_env(settings), log)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        await stop_group(proc, 5)
        raise DirectCallerError(
            f"the direct caller took over {timeout:.0f} s; {log_tail(log)}"
        ) from None
    if proc.returncode != 0:
        raise DirectCallerError(f"the direct caller exited {proc.returncode}; {log_tail(log)}")
    return DirectRun(**json.loads(result_file.read_text()))


def main(argv: list[str] | None = None) -> None:
    """Read the requests, make the starts, write the measurement."""
    parser = argparse.ArgumentParser(prog="python -m bench.direct", description=__doc__)
    parser.add_argument("requests", type=Path, help="pickled start_workflow keyword arguments")
    parser.add_argument("result", type=Path, help="where to write the measurement (JSON)")
    parser.add_argument("--rate", type=float, required=True, help="starts per second")
    parser.add_argument("--concurrency", type=int, required=True, help="starts at once, at most")
    args = parser.parse_args(argv)
    requests: list[dict[str, Any]] = pickle.loads(args.requests.read_bytes())
    measured = run_loop(call(Settings(), requests, args.rate, args.concurrency))
    args.result.write_text(json.dumps(asdict(measured)))


if __name__ == "__main__":
    main()
