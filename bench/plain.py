"""A plain Kafka-fed starter in an OS process of its own: the least such a starter does.

    python -m bench.plain ROUTES --group GROUP

It reads the first route's topic in consumer group GROUP as the bridge reads
(``read_committed``, the bridge's own ``bridge.kafka.consumer``), decodes and routes
each record with the bridge's ``Ingress`` and calls ``client.start_workflow`` with the
request the raw side sends (``bench.throughput.start_request``) as soon as the record
is in hand, every call at once. Nothing else: no per-key order, no limit of calls in
flight, no retries, no provenance, no offset commits, metrics or logs. The latency
scenario runs it beside the bridge at the same rate: what the packages the bridge is
built from (aiokafka, the Temporal SDK) and Kafka cost on this machine before anything
the bridge adds. Settings come from ``KTB_*`` variables like a bridge's; a start that
fails is written to stderr and not tried again. It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord

from bench.throughput import start_request
from bridge import kafka
from bridge.cli.common import run_loop
from bridge.codec import SchemaCatalog
from bridge.ingress import Ingress
from bridge.routes import Router, RoutesConfig
from bridge.settings import REPO_ROOT, Settings
from bridge.temporal.client import connect_temporal


async def serve(settings: Settings, routes_file: Path, group: str) -> None:
    """Start a workflow for every record of the routes' first topic until cancelled."""
    config = RoutesConfig.load(routes_file)
    ingress = Ingress(SchemaCatalog.from_dir(settings.schemas_dir), Router(config), None, None)
    client = await connect_temporal(settings)
    consumer = kafka.consumer(
        settings, config.routes[0].topic, group_id=group, auto_offset_reset="earliest",
        isolation_level="read_committed",
    )  # fmt: skip
    calls: set[asyncio.Task[None]] = set()

    async def start(record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            request = start_request(*ingress.plan(record))
            await client.start_workflow(request.pop("workflow"), **request)
        except Exception as exc:  # a benchmark's starter reports a failed start and goes on
            print(f"{record.topic}[{record.partition}]@{record.offset}: {exc!r}", file=sys.stderr)

    await kafka.start(consumer, settings)
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    call = asyncio.create_task(start(record))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
    finally:
        for call in calls:
            call.cancel()
        await consumer.stop()


@contextlib.asynccontextmanager
async def plain_starter(
    settings: Settings, routes_file: Path, group: str, log: Path
) -> AsyncIterator[int]:
    """A ``python -m bench.plain`` process for the block (its pid), stopped after it.

    Nothing tells when it is in its group: the caller waits for its first starts.
    """
    env = {
        **os.environ,
        "KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KTB_TEMPORAL_ADDRESS": settings.temporal_address,
    }
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.plain", str(routes_file), f"--group={group}",
            env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc.pid
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.plain", description=__doc__)
    parser.add_argument("routes", type=Path, help="routes file; its first route's topic is read")
    parser.add_argument("--group", required=True, help="consumer group")
    args = parser.parse_args(argv)

    async def until_signalled() -> None:
        task: asyncio.Task[Any] = asyncio.create_task(serve(Settings(), args.routes, args.group))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run_loop(until_signalled())


if __name__ == "__main__":
    main()
