"""The bridge, a worker and the HTTP API running for a test: in this process, or the
bridge as an OS process of its own (for kill -9 tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.consumer import BridgeConsumer
from bridge.decoding import open_decoder
from bridge.dispatch import Dispatcher
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import Telemetry
from bridge.policies import open_policies
from bridge.provenance import ProvenanceWriter
from bridge.routes import Router, RoutesConfig
from bridge.sdk.egress import Publisher
from bridge.sdk.window import with_collector
from bridge.serving import server_config
from bridge.settings import REPO_ROOT, Settings
from bridge.temporal.sandbox import BRIDGE_RUNNER
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    config: RoutesConfig,
    metrics: Metrics | None = None,
    provenance: bool = False,
) -> AsyncIterator[BridgeConsumer]:
    """An in-process bridge instance, decoding as ``ktb bridge`` does (the Schema Registry
    of ``settings`` included); ``provenance`` records to ``settings.provenance_topic``."""
    producer = kafka.producer(settings)
    await producer.start()
    router = Router(config)
    writer = ProvenanceWriter.for_settings(producer, settings) if provenance else None
    try:
        async with open_decoder(settings, catalog, config.envelope) as decoder:
            ingress = Ingress(
                catalog,
                router,
                Dispatcher(client, timedelta(seconds=settings.temporal_rpc_timeout_s)),
                DeadLetterPublisher(producer),
                metrics or Metrics(),
                provenance=writer,
                decoder=decoder,
            )
            async with open_policies(settings, ingress, producer, ingress.metrics) as policies:
                consumer = BridgeConsumer(settings, ingress, router.topics, policies=policies)
                task = asyncio.create_task(consumer.run())
                try:
                    yield consumer
                finally:
                    consumer.stop()
                    await asyncio.wait_for(task, 60)
    finally:
        if writer is not None:
            await writer.close()
        await producer.stop()


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    task_queue: str,
    workflows: Sequence[type],
    activities: Sequence[Callable[..., Any]] = (),
    metrics: Metrics | None = None,
    provenance: bool = False,
) -> AsyncIterator[Worker]:
    """An in-process worker with the publishing activity and the window collector
    registered, as ``open_worker`` registers them."""
    producer = kafka.producer(settings)
    await producer.start()
    writer = ProvenanceWriter.for_settings(producer, settings) if provenance else None
    publisher = Publisher(producer, catalog, "tests", metrics or Metrics(), writer)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=with_collector(workflows),
        activities=[publisher.publish, *activities],
        workflow_runner=BRIDGE_RUNNER,
    )
    try:
        async with worker:
            yield worker
    finally:
        if writer is not None:
            await writer.close()
        await producer.stop()


def bridge_process(
    settings: Settings, routes_file: Path, log: Path, **extra_env: str
) -> subprocess.Popen[bytes]:
    """``ktb bridge`` as a separate OS process (for kill -9 tests); ``extra_env`` last."""
    env = dict(os.environ)
    env.update(
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_TEMPORAL_ADDRESS=settings.temporal_address,
        KTB_GROUP_ID=settings.group_id,
        KTB_ROUTES_FILE=str(routes_file),
        KTB_SCHEMAS_DIR=str(REPO_ROOT / "schemas"),
        KTB_COMMIT_INTERVAL_S="0.2",
        KTB_RETRY_MAX_S="1",
    )
    env.update(extra_env)
    if settings.schema_registry_url is not None:
        env["KTB_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "bridge"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, metrics: Metrics | None = None, telemetry: Telemetry | None = None
) -> AsyncIterator[str]:
    """The HTTP API served by uvicorn in this event loop on a free port; yields its base URL."""
    from bridge.api import create_app

    async with serving(create_app(settings, metrics=metrics, telemetry=telemetry)) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(app: Any, port: int | None = None, lifespan: str = "on") -> AsyncIterator[str]:
    """An ASGI app served by uvicorn in this event loop (on a free port unless ``port``);
    yields its base URL, stops it on exit."""
    import uvicorn

    from bridge.dev.stack import free_port

    port = port or free_port()
    config = server_config(app, "127.0.0.1", port, lifespan=lifespan)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
            raise RuntimeError(f"{getattr(app, 'title', 'the app')} did not start (see the log)")
        return server.started

    await eventually(started, 60, 0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
