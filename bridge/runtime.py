"""Building the long-lived clients of a ktb process from settings, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from bridge import kafka
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


async def connect_temporal(settings: Settings) -> Client:
    """A Temporal client for the configured address and namespace."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


@contextlib.asynccontextmanager
async def started_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped (and flushed) on exit."""
    producer = kafka.producer(settings)
    await producer.start()
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
