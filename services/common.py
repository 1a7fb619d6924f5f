"""What every example service shares, so that each service keeps only its domain.

- ``service_main``: the entry point, ``python -m services.<name> server|worker``;
- ``run_service_worker``: the Temporal worker body (the service's activities, and
  workflows, on its task queue, with the fault taxonomy mapped onto retries);
- ``run_service_consumer``: the Kafka consumer body of a downstream service, over
  ``consume_events``, a loop that decodes every record with the library's ``Decoder``;
- ``run_service_server``: the HTTP server body (the service's read model over its
  own database, on its port), with ``app`` and ``not_found`` for its routes.

Everything comes from ``bridge``'s public surface, as it would for any user.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from aiokafka.errors import CommitFailedError
from fastapi import FastAPI, HTTPException

from bridge import (
    Decoder,
    Event,
    FaultInterceptor,
    PermanentError,
    RecordLike,
    SchemaCatalog,
    Settings,
    TransientError,
    kafka,
    open_decoder,
    open_telemetry,
    open_worker,
    run_worker,
    server_config,
    setup_logging,
    stop_on_signals,
    whole_stdio,
)
from services.config import Service, ServicesConfig, WorkerService
from services.store import Store

log = logging.getLogger("services")
DECODE_RETRY_S = 0.5
DECODE_RETRY_MAX_S = 10.0
"""Waits between decodes of a record while the Schema Registry does not answer."""

Activities = Callable[[ServicesConfig, Store], Sequence[Callable[..., Any]]]
"""Builds a service's activities over its configuration and its own database."""
EventHandler = Callable[[Sequence[Event]], Awaitable[object]]
"""Takes one batch of decoded events; must be idempotent (records are read at least once)."""


# --- the entry point --------------------------------------------------------------


def service_main(name: Service, argv: list[str] | None = None) -> None:
    """Run ``services.<name>.worker|server.main(settings)`` as the command line asks."""
    args = sys.argv[1:] if argv is None else argv
    modes = ("worker", "server")
    if len(args) != 1 or args[0] not in modes:
        sys.exit(f"usage: python -m services.{name} {{{'|'.join(modes)}}}")
    mode = args[0]
    try:
        module = importlib.import_module(f"services.{name}.{mode}")
    except ModuleNotFoundError:
        sys.exit(f"services.{name} has no {mode} mode")
    whole_stdio()
    settings = Settings()
    setup_logging(settings.log_level, console=settings.log_format == "console")
    asyncio.run(module.main(settings))


@contextlib.contextmanager
def open_store(service: Service, schema: str, settings: Settings) -> Iterator[Store]:
    """The service's own database with ``schema`` applied, closed on exit."""
    store = Store(ServicesConfig.database(service, settings), schema)
    try:
        yield store
    finally:
        store.close()


# --- workers ----------------------------------------------------------------------


async def run_service_worker(
    settings: Settings,
    service: WorkerService,
    schema: str,
    activities: Activities,
    workflows: Sequence[type] = (),
) -> None:
    """Host ``service``'s activities (and ``workflows``) on its task queue until SIGTERM.

    ``FaultInterceptor`` gives each fault of the taxonomy its retry schedule
    (``KTB_SERVICES_RETRY_SCALE`` shrinks it); ``run_worker`` registers the
    publishing activity next to the service's own.
    """
    config = ServicesConfig()
    with open_store(service, schema, settings) as store:
        await run_worker(
            settings,
            config.task_queue(service),
            workflows,
            activities(config, store),
            interceptors=[FaultInterceptor(config.retry_scale)],
        )


async def run_service_consumer(
    settings: Settings,
    service: Service,
    schema: str,
    topics: Sequence[str],
    group_id: str,
    handler: Callable[[Store], EventHandler],
    worker: ConsumerWorker | None = None,
) -> None:
    """Consume ``topics`` as ``group_id`` into the service's database until SIGTERM;
    with ``worker``, host its workflows and activities on its task queue meanwhile."""
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    stop = asyncio.Event()
    with open_store(service, schema, settings) as store, open_telemetry(settings, service) as t:
        async with contextlib.AsyncExitStack() as hosted:
            if worker is not None:
                await hosted.enter_async_context(
                    open_worker(
                        settings,
                        t,
                        worker.task_queue,
                        worker.workflows,
                        worker.activities(store),
                        [FaultInterceptor(ServicesConfig().retry_scale)],
                    )
                )
            stop_on_signals(stop.set)
            await consume_events(settings, catalog, topics, group_id, handler(store), stop)


@dataclass(frozen=True)
class ConsumerWorker:
    """The Temporal worker a consuming service hosts beside its consumer."""

    task_queue: str
    workflows: Sequence[type]
    activities: Callable[[Store], Sequence[Callable[..., Any]]]


async def consume_events(
    settings: Settings,
    catalog: SchemaCatalog,
    topics: Sequence[str],
    group_id: str,
    handle: EventHandler,
    stop: asyncio.Event,
    *,
    from_latest: bool = False,
    live: asyncio.Event | None = None,
) -> None:
    """Consume ``topics`` as ``group_id`` until ``stop`` is set, at least once.

    A group with no committed offsets starts at the beginning of each partition, or
    with ``from_latest`` at its end (a consumer that only reacts to what happens from
    now on, such as a cache's invalidation); ``live`` is set once partitions are
    assigned and their positions known: every record produced after that is seen.

    Each record is decoded by the library's ``Decoder``, the one the bridge uses
    (every format it reads: Schema Registry framing too, with the writer schema from
    ``KTB_SCHEMA_REGISTRY_URL``); a record that is not an event is logged and skipped,
    a registry that does not answer is waited for. A batch's events go to ``handle``,
    then the batch is committed: after a crash or a rebalance records are read again,
    so ``handle`` dedupes (on ``Event.id``, the ``ce_id``).
    """
    reset = "latest" if from_latest else "earliest"
    consumer = kafka.consumer(settings, *topics, group_id=group_id, auto_offset_reset=reset)
    await kafka.start(consumer, settings)
    log.info("consuming %s as group %s", ", ".join(topics), group_id)
    try:
        async with open_decoder(settings, catalog, {}) as decoder:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                if live is not None and not live.is_set() and consumer.assignment():
                    for tp in consumer.assignment():
                        await consumer.position(tp)
                    live.set()
                records = [r for rs in batch.values() for r in rs]
                if not records:
                    continue
                try:
                    events = [e for r in records if (e := await _decode(decoder, r, stop))]
                except TransientError:
                    return  # stopped while the registry was away: nothing committed
                if events:
                    await handle(events)
                try:
                    await consumer.commit()
                except CommitFailedError as exc:
                    # A rebalance took the partitions: the next owner re-reads, handle dedupes.
                    log.warning("commit failed after a rebalance: %s", exc)
    finally:
        await kafka.stop_consumer(consumer)


async def _decode(decoder: Decoder, record: RecordLike, stop: asyncio.Event) -> Event | None:
    """The record's event (``None``: not an event, skipped); while the Schema Registry
    does not answer, retried with doubling waits until it does or ``stop`` is set."""
    wait = DECODE_RETRY_S
    while True:
        try:
            return await decoder.decode(record)
        except PermanentError as exc:
            log.warning(
                "skipping a record that is not an event: %s",
                exc.message,
                extra={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            return None
        except TransientError as exc:
            if stop.is_set():
                raise
            log.warning("cannot decode yet, retrying in %.1fs: %s", wait, exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            wait = min(wait * 2, DECODE_RETRY_MAX_S)


# --- HTTP servers -----------------------------------------------------------------


async def run_service_server(
    settings: Settings, service: Service, schema: str, create_app: Callable[[Store], FastAPI]
) -> None:
    """Serve ``create_app(store)`` over the service's database on its port until SIGTERM."""
    config = ServicesConfig()
    with open_store(service, schema, settings) as store:
        await serve(create_app(store), config.host, config.port(service, settings))


def app(title: str) -> FastAPI:
    """A FastAPI app with ``GET /healthz``."""
    application = FastAPI(title=title)

    @application.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    return application


def not_found(what: str) -> HTTPException:
    """A 404 naming what was looked for."""
    return HTTPException(status_code=404, detail=f"{what} not found")


class _Server(uvicorn.Server):
    """A uvicorn server that exits normally after a graceful stop on SIGINT/SIGTERM.

    uvicorn re-raises the signal once it has shut down, so the process would end
    "killed by SIGTERM"; a process supervisor should see a clean exit instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        stop_on_signals(self._stop)
        yield

    def _stop(self) -> None:
        self.should_exit = True


async def serve(application: FastAPI, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then finish open requests and return."""
    config = server_config(application, host, port, access_log=False, lifespan="off")
    log.info("%s listening on http://%s:%d", application.title, host, port)
    await _Server(config).serve()
