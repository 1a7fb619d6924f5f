"""Building the long-lived clients of a ktb process from settings, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from temporalio.client import Client
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RetryConfig
from temporalio.worker import Interceptor, Worker

from bridge import kafka, security
from bridge.codec import SchemaCatalog
from bridge.consumer import BridgeConsumer
from bridge.dispatch import Dispatcher
from bridge.dlq import DeadLetterPublisher
from bridge.egress import Publisher
from bridge.ingress import Ingress
from bridge.metrics import Metrics
from bridge.provenance import ProvenanceWriter
from bridge.routes import Router
from bridge.settings import Settings

log = logging.getLogger("ktb")


# The bridge retries transient failures itself (pausing the partition), so each
# call gives up quickly instead of holding a slot through a long outage.
RPC_RETRY = RetryConfig(max_retries=4, max_interval_millis=1000, max_elapsed_time_millis=3000)


@functools.cache
def temporal_runtime() -> Runtime:
    """A Temporal SDK runtime whose core logs only errors (the bridge logs its own retries)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


async def connect_temporal(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A Temporal client for the configured address, namespace, TLS/mTLS and API key.

    The namespace comes from settings only; every action of this process runs in it.
    """
    return await Client.connect(
        settings.temporal_address,
        **security.temporal_connect_options(settings),
        retry_config=RPC_RETRY,
        runtime=runtime or temporal_runtime(),
    )


@contextlib.asynccontextmanager
async def started_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped (and flushed) on exit."""
    producer = kafka.producer(settings)
    await kafka.start(producer, settings)
    try:
        yield producer
    finally:
        await producer.stop()


def stop_on_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT/SIGTERM (graceful stop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)


async def run_bridge(settings: Settings, metrics: Metrics | None = None) -> None:
    """Run one bridge instance until SIGTERM/SIGINT; finish in-flight work and commit."""
    metrics = metrics or Metrics()
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    router = Router.from_file(settings.routes_file)
    client = await connect_temporal(settings)
    async with started_producer(settings) as producer:
        ingress = Ingress(
            catalog,
            router,
            Dispatcher(client),
            DeadLetterPublisher(producer),
            metrics,
            provenance=ProvenanceWriter(producer, settings.provenance_topic),
        )
        consumer = BridgeConsumer(settings, ingress, router.topics, metrics)
        stop_on_signals(consumer.stop)
        log.info("bridge consuming %s as group %s", ", ".join(router.topics), settings.group_id)
        await consumer.run()
    log.info("bridge stopped after %d records", consumer.processed)


async def run_worker(
    settings: Settings,
    task_queue: str,
    workflows: Sequence[type],
    activities: Sequence[Callable[..., Any]] = (),
    metrics: Metrics | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> None:
    """Run a Temporal worker with the publishing activity registered next to ``activities``."""
    metrics = metrics or Metrics()
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    client = await connect_temporal(settings)
    async with started_producer(settings) as producer:
        publisher = Publisher(
            producer,
            catalog,
            settings.source,
            metrics,
            ProvenanceWriter(producer, settings.provenance_topic),
        )
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=list(workflows),
            activities=[publisher.publish, *activities],
            interceptors=list(interceptors),
        )
        stop = asyncio.Event()
        stop_on_signals(stop.set)
        async with worker:
            log.info("worker polling task queue %s", task_queue)
            await stop.wait()
