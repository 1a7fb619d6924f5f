"""Building the long-lived clients of a ktb process from settings, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from temporalio.client import Client
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.runtime import Runtime
from temporalio.service import RetryConfig
from temporalio.worker import Interceptor, Worker

from bridge import kafka, security
from bridge.codec import SchemaCatalog
from bridge.consumer import BridgeConsumer
from bridge.dispatch import Dispatcher
from bridge.dlq import DeadLetterPublisher
from bridge.egress import Publisher
from bridge.errors import ConfigError, TransientError
from bridge.ingress import Ingress
from bridge.metrics import Metrics
from bridge.provenance import ProvenanceWriter
from bridge.routes import Router
from bridge.settings import Settings
from bridge.telemetry import Telemetry, open_telemetry, shared_runtime

log = logging.getLogger("ktb")


# The bridge retries transient failures itself (pausing the partition), so each
# call gives up quickly instead of holding a slot through a long outage.
# How long a Temporal port may accept connections while the client still fails
# before the failure counts as configuration rather than a server starting up.
ANSWERING_GRACE_S = 10.0
RPC_RETRY = RetryConfig(max_retries=4, max_interval_millis=1000, max_elapsed_time_millis=3000)


async def connect_temporal(
    settings: Settings,
    runtime: Runtime | None = None,
    interceptors: Sequence[ClientInterceptor] = (),
) -> Client:
    """A Temporal client for the configured address, namespace, TLS/mTLS and API key.

    The namespace comes from settings only; every action of this process runs in it.
    ``runtime`` and ``interceptors`` come from the process's ``Telemetry`` (SDK
    metrics, tracing); by default core logs only errors and nothing is traced.
    """
    # A process may start while Temporal is down (a restart, a deploy in the wrong
    # order): keep trying with backoff until the start-up deadline.
    deadline = time.monotonic() + settings.connect_timeout_s
    delay = settings.retry_initial_s
    answering_since: float | None = None
    while True:
        try:
            return await Client.connect(
                settings.temporal_address,
                **security.temporal_connect_options(settings),
                retry_config=RPC_RETRY,
                runtime=runtime or shared_runtime(),
                interceptors=list(interceptors),
            )
        except RuntimeError as exc:
            if await _accepts_tcp(settings.temporal_address):
                # Something answers yet the client cannot connect: past a server's
                # start-up, that is a TLS, credential or namespace problem, which
                # waiting does not fix.
                answering_since = answering_since or time.monotonic()
                if time.monotonic() - answering_since > ANSWERING_GRACE_S:
                    raise ConfigError(
                        f"cannot connect to Temporal at {settings.temporal_address}: {exc}"
                    ) from exc
            else:
                answering_since = None
            if time.monotonic() + delay > deadline:
                raise TransientError(
                    f"Temporal at {settings.temporal_address} is unreachable: {exc}"
                ) from exc
            log.warning(
                "Temporal at %s unreachable, retrying in %.1fs", settings.temporal_address, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.retry_max_s)


async def _accepts_tcp(address: str, timeout: float = 2.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def started_producer(settings: Settings, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped (and flushed) on exit.

    The flush is bounded by ``commit_timeout_s``: with Kafka gone at shutdown, what is
    still unsent (provenance records; dead letters are awaited before their commit)
    is given up rather than holding the process past its shutdown budget.
    """
    producer = kafka.producer(settings, **options)
    await kafka.start(producer, settings)
    try:
        yield producer
    finally:
        try:
            await asyncio.wait_for(producer.stop(), settings.commit_timeout_s)
        except TimeoutError:
            log.warning("a producer did not flush within %.0fs; stopped", settings.commit_timeout_s)


def stop_on_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT/SIGTERM (graceful stop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)


async def run_bridge(settings: Settings, metrics: Metrics | None = None) -> None:
    """Run one bridge instance until SIGTERM/SIGINT; finish in-flight work and commit."""
    with open_telemetry(settings, "bridge", metrics) as telemetry:
        async with open_bridge(settings, telemetry) as consumer:
            stop_on_signals(consumer.stop)
            log.info(
                "bridge consuming %s as group %s", ", ".join(consumer.topics), settings.group_id
            )
            # Start-up objects (schemas, routes, clients) live as long as the process:
            # keep them out of the collector's scans, whose pauses show in tail latency.
            gc.freeze()
            await consumer.run()
        log.info("bridge stopped after %d records", consumer.processed)


@contextlib.asynccontextmanager
async def open_bridge(settings: Settings, telemetry: Telemetry) -> AsyncIterator[BridgeConsumer]:
    """A bridge instance wired from settings; ``await consumer.run()`` consumes until ``stop()``."""
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    router = Router.from_file(settings.routes_file)
    client = await connect_temporal(settings, telemetry.runtime, telemetry.client_interceptors)
    # Provenance gets a producer of its own: one record per event, batched over a
    # longer linger than dead letters need, and never queued behind them.
    recorder = started_producer(settings, linger_ms=settings.provenance_linger_ms)
    async with started_producer(settings) as producer, recorder as provenance:
        ingress = Ingress(
            catalog,
            router,
            Dispatcher(client, timedelta(seconds=settings.temporal_rpc_timeout_s)),
            DeadLetterPublisher(producer),
            telemetry.metrics,
            provenance=ProvenanceWriter(provenance, settings.provenance_topic),
            tracer=telemetry.tracer,
        )
        yield BridgeConsumer(settings, ingress, router.topics, telemetry.metrics)


async def run_worker(
    settings: Settings,
    task_queue: str,
    workflows: Sequence[type],
    activities: Sequence[Callable[..., Any]] = (),
    metrics: Metrics | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> None:
    """Run a Temporal worker with the publishing activity registered next to ``activities``."""
    with open_telemetry(settings, f"worker-{task_queue}", metrics) as telemetry:
        async with open_worker(
            settings, telemetry, task_queue, workflows, activities, interceptors
        ):
            stop = asyncio.Event()
            stop_on_signals(stop.set)
            log.info("worker polling task queue %s", task_queue)
            await stop.wait()


@contextlib.asynccontextmanager
async def open_worker(
    settings: Settings,
    telemetry: Telemetry,
    task_queue: str,
    workflows: Sequence[type],
    activities: Sequence[Callable[..., Any]] = (),
    interceptors: Sequence[Interceptor] = (),
) -> AsyncIterator[Worker]:
    """A running worker wired from settings, with the publishing activity and the metrics."""
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    client = await connect_temporal(settings, telemetry.runtime, telemetry.client_interceptors)
    async with started_producer(settings) as producer:
        publisher = Publisher(
            producer,
            catalog,
            settings.source,
            telemetry.metrics,
            ProvenanceWriter(producer, settings.provenance_topic),
        )
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=list(workflows),
            activities=[publisher.publish, *activities],
            interceptors=[*telemetry.worker_interceptors(), *interceptors],
        )
        async with worker:
            yield worker
