"""A plain Kafka-fed starter in an OS process of its own: the least such a starter does.

    python -m bench.plain ROUTES --group GROUP

It reads the first route's topic in consumer group GROUP with the bridge's own
``bridge.kafka.consumer`` (``read_committed``, from the earliest offset; the bridge's
session, heartbeat and fetch sizes are not set), decodes and routes each record with
the bridge's ``Ingress`` and calls ``client.start_workflow`` with the request the raw
side sends (``bench.common.start_request``) as soon as the record is in hand,
every call at once. Nothing else: no per-key order, no limit of calls in flight, no
retries, no provenance, no offset commits, metrics or log lines but a failed start's
(on stderr; it is not tried again). The latency scenario runs it in turns with the
bridge and the direct calls, at the same rate and while they are idle: what the
packages the bridge is built from (aiokafka, the Temporal SDK) and Kafka cost on this
machine before anything the bridge adds. Settings come from ``KTB_*`` variables like a
bridge's. It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord

from bench.bridge_process import Child, ChildError, spawn
from bench.common import stack_env, start_request
from bridge import kafka
from bridge.cli.common import run_loop
from bridge.codec import SchemaCatalog
from bridge.dev.processes import stop_group
from bridge.ingress import Ingress
from bridge.routes import Router, RoutesConfig
from bridge.settings import Settings
from bridge.temporal.client import connect_temporal
from bridge.wiring import stop_on_signals


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


class PlainStarterError(ChildError):
    """The plain starter is not started, or exited before it was stopped (then with its log)."""


class PlainStarter(Child):
    """A ``python -m bench.plain`` process while the ``async with`` block runs.

    Nothing tells when it has joined its group: the caller waits for its first starts.
    """

    name = "plain starter"
    error = PlainStarterError

    def __init__(self, settings: Settings, routes_file: Path, group: str, log: Path) -> None:
        super().__init__(log)
        self.settings, self.routes_file, self.group = settings, routes_file, group
        self.killed = False
        """Whether stopping it took SIGKILL (it did not end within its time after SIGTERM)."""

    async def __aenter__(self) -> PlainStarter:
        args = ["bench.plain", str(self.routes_file), f"--group={self.group}"]
        self.proc = await spawn(args, stack_env(self.settings), self.log)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.killed = await stop_group(self.proc, 10)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.plain", description=__doc__)
    parser.add_argument("routes", type=Path, help="routes file; its first route's topic is read")
    parser.add_argument("--group", required=True, help="consumer group")
    args = parser.parse_args(argv)

    async def until_signalled() -> None:
        task: asyncio.Task[Any] = asyncio.create_task(serve(Settings(), args.routes, args.group))
        stop_on_signals(task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run_loop(until_signalled())


if __name__ == "__main__":
    main()
