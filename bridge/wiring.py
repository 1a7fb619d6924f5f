"""Building the long-lived clients of a ktb process from settings, in one place.

The API's modules (FastAPI) and the provenance store's (asyncpg) are imported by the
functions that wire them: a bridge or worker process never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import AIOKafkaProducer
from temporalio.client import Client
from temporalio.service import RPCError

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.concurrency import AUTO_MAXIMUM, AUTO_MINIMUM, ActionLimit
from bridge.consumer import BridgeConsumer
from bridge.decoding import open_decoder
from bridge.dispatch import Dispatcher
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.errors import ConfigError, DatabaseUnavailable, TransientError
from bridge.ingress import Ingress
from bridge.kafka.topics import ProvisionReport, provision_topics, topic_plan
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import Telemetry, open_telemetry
from bridge.policies import open_policies
from bridge.provenance import MAX_RECORD_BYTES, ProvenanceWriter
from bridge.routes import PublishSpec, Router, RoutesConfig
from bridge.sdk.egress import Publisher
from bridge.sdk.window import with_collector
from bridge.settings import Settings
from bridge.temporal.attributes import register_search_attributes
from bridge.temporal.client import connect_temporal, running_worker

if TYPE_CHECKING:
    from temporalio.worker import Interceptor, Worker

    from bridge.api.auth import SessionSigner
    from bridge.api.state import ApiState
    from bridge.registry.subjects import RegistryWriter
    from bridge.store import Database, Indexer, ProvenanceStore

T = TypeVar("T")
log = logging.getLogger("ktb")


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


def stop_on_signals(callback: Callable[[], object]) -> None:
    """Call ``callback`` on SIGINT/SIGTERM (graceful stop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)


BRIDGE_RUNTIME_THREADS = 1
"""Worker threads of a bridge's SDK runtime unless ``KTB_TEMPORAL_RUNTIME_THREADS`` says
otherwise. A bridge's calls wait on its one Python thread; with one runtime thread
instead of one per core it spent 7-8 % less CPU per event at the same rate (README,
Performance)."""


async def run_bridge(settings: Settings, metrics: Metrics | None = None) -> None:
    """Run one bridge instance until SIGTERM/SIGINT; finish in-flight work and commit."""
    with open_telemetry(
        settings, "bridge", metrics, runtime_threads=BRIDGE_RUNTIME_THREADS
    ) as telemetry:
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


def action_limit(settings: Settings, metrics: Metrics) -> ActionLimit:
    """The bridge's gate of actions in Temporal (``KTB_TEMPORAL_IN_FLIGHT``), its limit
    exported as ``ktb_temporal_in_flight_limit``. Adaptive, it stays between
    ``AUTO_MINIMUM`` and ``AUTO_MAXIMUM``, neither above ``max_in_flight``."""
    fixed = settings.temporal_in_flight
    limit = ActionLimit(
        None if fixed == "auto" else fixed,
        minimum=min(AUTO_MINIMUM, settings.max_in_flight),
        maximum=min(AUTO_MAXIMUM, settings.max_in_flight),
    )
    metrics.temporal_in_flight_limit.set_function(lambda: limit.limit)
    return limit


@contextlib.asynccontextmanager
async def open_bridge(settings: Settings, telemetry: Telemetry) -> AsyncIterator[BridgeConsumer]:
    """A bridge instance wired from settings; ``await consumer.run()`` consumes until ``stop()``."""
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    router = Router.from_file(settings.routes_file)
    client = await connect_temporal(settings, telemetry.runtime, telemetry.client_interceptors)
    # Provenance gets a producer of its own, never queued behind dead letters; its
    # records are batches of items (bridge.provenance), so a batch holds several.
    recorder = started_producer(settings, max_batch_size=2 * MAX_RECORD_BYTES)
    decoding = open_decoder(settings, catalog, router.config.envelope)
    async with (
        started_producer(settings) as producer,
        recorder as provenance_producer,
        decoding as decoder,
        ProvenanceWriter.for_settings(provenance_producer, settings) as provenance,
    ):
        limit = action_limit(settings, telemetry.metrics)
        ingress = Ingress(
            catalog,
            router,
            Dispatcher(
                client,
                timedelta(seconds=settings.temporal_rpc_timeout_s),
                limit,
                telemetry.metrics,
            ),
            DeadLetterPublisher(producer),
            telemetry.metrics,
            provenance=provenance,
            tracer=telemetry.tracer,
            decoder=decoder,
        )
        async with open_policies(settings, ingress, producer, telemetry.metrics) as policies:
            yield BridgeConsumer(
                settings, ingress, router.topics, telemetry.metrics, policies, limit
            )


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
    """A running worker wired from settings, with the publishing activity, the window
    collector (routes with ``debounce`` or ``batch`` target its task queue) and the metrics;
    started as ``running_worker`` starts it, waiting out a Temporal that is down."""
    # Here, not at the top: the HTTP API's process uses this module but runs no worker.
    from temporalio.worker import Worker

    from bridge.temporal.sandbox import BRIDGE_RUNNER

    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    publishing = publishing_formats(settings)
    async with (
        started_producer(settings) as producer,
        ProvenanceWriter.for_settings(producer, settings) as provenance,
        open_registry_writer(settings, catalog, publishing) as registry,
    ):
        publisher = Publisher(
            producer,
            catalog,
            settings.source,
            telemetry.metrics,
            provenance,
            publishing,
            registry,
        )

        def build(client: Client) -> Worker:
            return Worker(
                client,
                task_queue=task_queue,
                workflows=with_collector(workflows),
                activities=[publisher.publish, *activities],
                interceptors=[*telemetry.worker_interceptors(), *interceptors],
                workflow_runner=BRIDGE_RUNNER,
            )

        async with running_worker(
            settings, task_queue, build, telemetry.runtime, telemetry.client_interceptors
        ) as worker:
            yield worker


def publishing_formats(settings: Settings) -> dict[str, PublishSpec]:
    """The routes file's ``publish:`` section: how each topic's published events are
    written (none without a routes file: every topic as the activity asks)."""
    if not settings.routes_file.exists():
        return {}
    publishing = RoutesConfig.load(settings.routes_file).publish
    registry_topics = sorted(t for t, spec in publishing.items() if spec.registry)
    if registry_topics and settings.schema_registry_url is None:
        raise ConfigError(
            f"{settings.routes_file}: publish: {', '.join(registry_topics)} written in Schema "
            "Registry framing, and KTB_SCHEMA_REGISTRY_URL is not set"
        )
    return dict(publishing)


@contextlib.asynccontextmanager
async def open_registry_writer(
    settings: Settings, catalog: SchemaCatalog, publishing: Mapping[str, PublishSpec]
) -> AsyncIterator[RegistryWriter | None]:
    """The Schema Registry writer of a worker whose topics need one, closed on exit."""
    if not any(spec.registry for spec in publishing.values()):
        yield None
        return
    # Imported only where a topic is written for the registry: workers stay light.
    from bridge.registry.subjects import RegistryWriter

    writer = RegistryWriter.from_settings(settings, catalog)
    try:
        yield writer
    finally:
        await writer.aclose()


async def provision(
    settings: Settings, min_partitions: int | None = None, replication_factor: int = 1
) -> ProvisionReport:
    """Topics from the routes file (and ``min_partitions``), then the search attributes (the
    bridge's and those the routes set)."""
    config = RoutesConfig.load(settings.routes_file)
    report = ProvisionReport()
    await provision_topics(
        settings, topic_plan(config, settings, min_partitions), replication_factor, report
    )
    client = await connect_temporal(settings)
    try:
        report.search_attributes = await register_search_attributes(
            client, config.search_attributes()
        )
    except RPCError as exc:
        raise TransientError(
            f"registering search attributes in namespace {client.namespace}: {exc.message}"
        ) from exc
    report.migrations = await migrate_database(settings)
    return report


async def migrate_database(settings: Settings) -> list[int]:
    """Apply the provenance database's missing schema migrations; the versions applied."""
    from bridge.store import Database, migrate

    async with Database(settings) as database, database.connection() as conn:
        return await migrate(conn)


def _api_router(settings: Settings) -> Router | None:
    """The bridge's routes, to tell which topic and workflow an event maps to."""
    if not settings.routes_file.exists():
        log.warning("no routes file at %s: only KTB_API_TOPICS maps types", settings.routes_file)
        return None
    try:
        return Router.from_file(settings.routes_file)
    except ConfigError as exc:
        raise ConfigError(f"the API cannot use the routes file: {exc.message}") from exc


@contextlib.asynccontextmanager
async def open_api_state(
    settings: Settings, metrics: Metrics, telemetry: Telemetry | None = None
) -> AsyncIterator[ApiState]:
    """The API's composition root: every client it needs, closed on exit.

    With the process's ``telemetry`` the Temporal client records the SDK's
    metrics into the served registry and is traced when tracing is on.
    """
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    router = _api_router(settings)
    async with open_decoder(
        settings, catalog, router.config.envelope if router is not None else {}
    ) as decoder:
        # The API plans events with the bridge's own decoding and routing (unmatched
        # rule included) to answer which workflow an event goes to; it acts on nothing.
        ingress = (
            Ingress(catalog, router, None, None, metrics, decoder=decoder, rate_limits=False)
            if router is not None
            else None
        )
        async with _api_state(settings, metrics, telemetry, catalog, router, ingress) as state:
            yield state


def session_signer(settings: Settings) -> SessionSigner:
    """The signer of the console's sessions, with the configured secret if there is one."""
    from bridge.api.auth import SessionSigner

    secret = settings.api_session_secret
    return SessionSigner(
        secret.get_secret_value().encode() if secret is not None else None,
        settings.api_session_ttl_s,
    )


@contextlib.asynccontextmanager
async def _api_state(
    settings: Settings,
    metrics: Metrics,
    telemetry: Telemetry | None,
    catalog: SchemaCatalog,
    router: Router | None,
    ingress: Ingress | None,
) -> AsyncIterator[ApiState]:
    """The API's clients around its ``ingress``, closed on exit."""
    from bridge.api.auth import KeyRing
    from bridge.api.state import ApiState, topic_map
    from bridge.store import Indexer

    keys = KeyRing(settings.api_keys, enabled=settings.api_auth, sessions=session_signer(settings))
    if not settings.api_auth:
        log.warning("API authentication is OFF (KTB_API_AUTH=off): every caller sees every tenant")
    elif not settings.api_keys:
        log.warning("API authentication is on and no keys are configured: every call gets 401")
    async with contextlib.AsyncExitStack() as stack:

        async def temporal() -> Client:
            if telemetry is not None:
                return await connect_temporal(
                    settings, telemetry.runtime, telemetry.client_interceptors
                )
            return await connect_temporal(settings)

        async def producer() -> AIOKafkaProducer:
            started = kafka.producer(settings)
            stack.push_async_callback(started.stop)
            await kafka.start(started, settings)
            return started

        async def store() -> tuple[Database, ProvenanceStore, Indexer | None]:
            database, store = await stack.enter_async_context(open_store(settings))
            if not settings.api_indexer:
                return database, store, None
            indexer = Indexer(settings, store, metrics)
            stack.push_async_callback(indexer.stop)
            await indexer.start()
            return database, store, indexer

        # Connected at once: start-up takes the slowest connection, not their sum. All
        # end before a failure is raised, so what the others opened is closed with the stack.
        connected = await asyncio.gather(temporal(), producer(), store(), return_exceptions=True)
        client, kafka_producer = _ok(connected[0]), _ok(connected[1])
        database, provenance, indexer = _ok(connected[2])
        yield ApiState(
            settings=settings,
            catalog=catalog,
            metrics=metrics,
            keys=keys,
            producer=kafka_producer,
            client=client,
            database=database,
            store=provenance,
            indexer=indexer,
            ingress=ingress,
            topics=topic_map(settings, router.config if router else None),
        )


def _ok(result: T | BaseException) -> T:
    """A result of ``gather(..., return_exceptions=True)``, or its exception raised."""
    if isinstance(result, BaseException):
        raise result
    return result


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[tuple[Database, ProvenanceStore]]:
    """The provenance database's pool and the read model on it, closed on exit.

    A database that answers must have the current schema (``ktb provision``); one
    that does not answer yet is no reason not to start: lookups answer 503 and the
    indexer waits until it is back.
    """
    from bridge.store import LATEST_VERSION, Database, ProvenanceStore, schema_version
    from bridge.store.database import redacted

    database = Database(settings)
    await database.open()
    try:
        try:
            async with database.connection() as conn:
                version = await schema_version(conn)
        except DatabaseUnavailable as exc:
            log.warning("starting without the database for now: %s", exc.message)
        else:
            if version < LATEST_VERSION:
                raise ConfigError(
                    f"the database {redacted(database.url)} has schema version {version}, "
                    f"ktb needs {LATEST_VERSION}: run `ktb provision`"
                )
        yield database, ProvenanceStore(database, settings.provenance_retention_days)
    finally:
        await database.close()


async def run_indexer(settings: Settings) -> None:
    """``ktb indexer``: index the provenance topic until SIGINT/SIGTERM (``/metrics`` on
    ``KTB_METRICS_PORT``)."""
    from bridge.store import Indexer
    from bridge.store.database import redacted

    with open_telemetry(settings, "indexer", sdk_metrics=False) as telemetry:
        async with open_store(settings) as (database, store):
            indexer = Indexer(settings, store, telemetry.metrics)
            await indexer.start()
            stop = asyncio.Event()
            stop_on_signals(stop.set)
            log.info("indexing %s into %s", settings.provenance_topic, redacted(database.url))
            try:
                done = asyncio.create_task(indexer.wait())
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait([done, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if done.done():
                    done.result()
            finally:
                await indexer.stop()
