"""The ``ktb`` command line."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bridge.cli import dlq as cli_dlq
from bridge.cli import policies as cli_policies
from bridge.cli import replay as cli_replay
from bridge.cli import schemas as cli_schemas
from bridge.cli.common import fail, load_settings, run, run_loop
from bridge.dev.postgres import POSTGRES_PORT
from bridge.dev.registry import REGISTRY_PORT
from bridge.errors import BridgeError, ConfigError, TransientError
from bridge.observability import logs
from bridge.stdio import whole_stdio

if TYPE_CHECKING:
    from bridge.codec import SchemaCatalog
    from bridge.routes import PublishSpec, RouteProblem, RoutesConfig
    from bridge.settings import Settings

app = typer.Typer(
    name="ktb",
    help="Kafka <-> Temporal bridge: route domain events to workflows and back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
routes_app = typer.Typer(help="Inspect and check routes files.", no_args_is_help=True)
app.add_typer(routes_app, name="routes")


# --- running -----------------------------------------------------------------------


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="Where the stack keeps its state and logs")] = (
        Path(".ktb")
    ),
    kafka_port: int = 9092,
    temporal_port: int = 7233,
    temporal_ui_port: int = 8233,
    api_port: int = 8080,
    postgres_port: Annotated[
        int, typer.Option(help="Port of PostgreSQL (the provenance read model)")
    ] = POSTGRES_PORT,
    registry_port: Annotated[
        int, typer.Option(help="Port of the Schema Registry (Apicurio, in memory)")
    ] = REGISTRY_PORT,
    no_registry: Annotated[bool, typer.Option(help="Start no Schema Registry")] = False,
    procfile: Annotated[Path, typer.Option(help="Processes to run on the stack")] = Path(
        "Procfile"
    ),
    no_processes: Annotated[
        bool, typer.Option(help="Start the services (Kafka, Temporal, PostgreSQL, registry) only")
    ] = False,
) -> None:
    """Run the whole local stack in the foreground; Ctrl-C stops everything."""
    from bridge.dev.devstack import DevStack

    logs.setup(load_settings().log_level, console=True)
    stack = DevStack(
        data_dir=data_dir.resolve(),
        kafka_port=kafka_port,
        temporal_port=temporal_port,
        temporal_ui_port=temporal_ui_port,
        api_port=api_port,
        postgres_port=postgres_port,
        registry_port=None if no_registry else registry_port,
        procfile=None if no_processes else procfile,
    )
    try:
        code = run_loop(stack.run())
    except BridgeError as exc:
        fail(exc.message, 1)
    raise typer.Exit(code)


@cli_policies.bridge_app.callback(invoke_without_command=True)
def bridge(
    ctx: typer.Context,
    routes: Annotated[Path | None, typer.Option(help="Routes file")] = None,
    group_id: Annotated[str | None, typer.Option(help="Kafka consumer group")] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="Records acted on at once")] = None,
) -> None:
    """Run one bridge instance (several instances in one group share partitions)."""
    if ctx.invoked_subcommand is not None:
        return
    from bridge.wiring import run_bridge

    settings = load_settings(routes_file=routes, group_id=group_id, max_in_flight=max_in_flight)
    logs.setup(settings.log_level, console=settings.log_format == "console")
    try:
        run_loop(run_bridge(settings))
    except ConfigError as exc:
        fail(exc.message, 1)


@app.command()
def worker(
    module: Annotated[str, typer.Argument(help="Module with `async def main(settings)`")],
) -> None:
    """Run a worker module, e.g. ``ktb worker services.orders.worker``."""
    settings = load_settings()
    logs.setup(settings.log_level, console=settings.log_format == "console")
    # Like ``python -m``: modules of the project in the working directory are found
    # (the example services are not installed with the package).
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        fail(f"cannot import {module}: {exc}")
    if not hasattr(target, "main"):
        fail(f"{module} has no main(settings)")
    run_loop(target.main(settings))


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port (default: KTB_API_PORT, 8080)")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default: KTB_API_HOST)")] = None,
) -> None:
    """Serve the HTTP API (produce events, provenance, processes, streams)."""
    from bridge.api.server import serve

    settings = load_settings(api_port=port, api_host=host)
    logs.setup(settings.log_level, console=settings.log_format == "console")
    try:
        serve(settings)
    except ConfigError as exc:
        fail(exc.message, 1)


@app.command()
def indexer() -> None:
    """Index the provenance topic into the database (alone; `ktb api` does it by default)."""
    from bridge.wiring import run_indexer

    settings = load_settings()
    logs.setup(settings.log_level, console=settings.log_format == "console")
    run(run_indexer(settings))


@app.command("api-key")
def api_key(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to")],
) -> None:
    """Make a new API key; prints the key and the KTB_API_KEYS entry (its hash) to configure."""
    from bridge.api.auth import hash_key, new_key

    key = new_key()
    typer.echo(f"key: {key}")
    typer.echo(f"KTB_API_KEYS entry: {json.dumps({hash_key(key): tenant})}")


@app.command()
def provision(
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="At least this many partitions per topic (DLQs excepted)"),
    ] = None,
    replication_factor: Annotated[
        int, typer.Option(min=1, help="Replicas of each topic created")
    ] = 1,
) -> None:
    """Create or grow the deployment's topics, register search attributes and migrate the
    provenance database (idempotent)."""
    from bridge.wiring import provision as run_provision

    settings = load_settings()
    logs.setup(settings.log_level, console=settings.log_format == "console")
    try:
        report = run_loop(run_provision(settings, partitions, replication_factor))
    except BridgeError as exc:
        fail(exc.message, 1)
    for name, count in sorted(report.created.items()):
        typer.echo(f"created {name} ({count} partitions)")
    for name, (before, after) in sorted(report.grown.items()):
        typer.echo(f"grew {name} from {before} to {after} partitions")
    added = ", ".join(report.search_attributes) or "none missing"
    typer.echo(f"{len(report.unchanged)} topics unchanged; search attributes added: {added}")
    migrated = ", ".join(map(str, report.migrations)) or "none missing"
    typer.echo(f"database schema migrations applied: {migrated}")


# --- producing and tailing -------------------------------------------------------------


FORMATS = ("avro", "json", "confluent-avro", "confluent-json")


@app.command()
def produce(
    topic: Annotated[str, typer.Argument(help="Kafka topic")],
    type: Annotated[str, typer.Option("--type", help="CloudEvents type (= Avro schema name)")],
    data: Annotated[str, typer.Option(help="Event data as a JSON object")],
    key: Annotated[str | None, typer.Option(help="Kafka key (the business key)")] = None,
    id: Annotated[str | None, typer.Option("--id", help="Event id (default: a new UUID)")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant id (ce_tenantid)")] = None,
    source: Annotated[str, typer.Option(help="CloudEvents source")] = "ktb-cli",
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="avro (single-object), json, confluent-avro or confluent-json (Schema "
            "Registry framing); default: the topic's publish: format, else avro",
        ),
    ] = None,
    json_data: Annotated[bool, typer.Option("--json", help="The same as --format json")] = False,
    subject_strategy: Annotated[
        str | None,
        typer.Option(help="topic, record or topic_record; default: the topic's, else topic"),
    ] = None,
    auto_register: Annotated[
        bool | None,
        typer.Option(
            "--auto-register/--no-auto-register",
            help="Register the schema under its subject if missing; default: the topic's, else no",
        ),
    ] = None,
    no_cloudevents: Annotated[
        bool,
        typer.Option(
            "--no-cloudevents", help="No ce_* headers: the value alone, as a plain producer writes"
        ),
    ] = False,
) -> None:
    """Encode one event with its type's schema and produce it; prints the event id."""
    from bridge.routes import RoutesConfig

    settings = load_settings()
    if json_data and format not in (None, "json"):
        fail(f"--json and --format {format} disagree")
    if format is not None and format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        fail(f"--data is not valid JSON: {exc}")
    if not isinstance(parsed, dict):
        fail("--data must be a JSON object")
    try:
        configured = (
            RoutesConfig.load(settings.routes_file).publish.get(topic)
            if settings.routes_file.exists()
            else None
        )
        spec = _publish_spec(
            configured, "json" if json_data else format, subject_strategy, auto_register
        )
    except ConfigError as exc:
        fail(exc.message)
    event_id = id or str(uuid.uuid4())
    try:
        sent = run_loop(
            _produce(
                settings, topic, spec, type, parsed, event_id, source, key, tenant, no_cloudevents
            )
        )
    except TransientError as exc:
        fail(exc.message, 1)
    except BridgeError as exc:
        fail(exc.message)
    except Exception as exc:  # surface any Kafka client failure as a clean CLI error
        fail(f"could not produce to {topic} at {settings.kafka_bootstrap}: {exc}", 1)
    typer.echo(sent)


def _publish_spec(
    configured: PublishSpec | None,
    format: str | None,
    strategy: str | None,
    auto_register: bool | None,
) -> PublishSpec:
    """The topic's ``publish:`` settings with the command's options over them."""
    from bridge.routes import PublishSpec

    base = configured.model_dump(exclude_unset=True) if configured is not None else {}
    options = {"format": format, "subject_strategy": strategy, "auto_register": auto_register}
    merged = {**base, **{k: v for k, v in options.items() if v is not None}}
    merged.setdefault("format", "avro")
    if merged["format"] not in ("confluent-avro", "confluent-json"):
        if strategy is not None or auto_register is not None:
            raise ConfigError(
                "--subject-strategy and --auto-register apply to confluent-avro and "
                "confluent-json only"
            )
        merged.pop("subject_strategy", None)
        merged.pop("auto_register", None)
    try:
        return PublishSpec.model_validate(merged)
    except ValueError as exc:
        raise ConfigError(f"invalid --subject-strategy or format: {exc}") from exc


async def _produce(
    settings: Settings,
    topic: str,
    spec: PublishSpec,
    type_name: str,
    data: dict[str, Any],
    event_id: str,
    source: str,
    key: str | None,
    tenant: str | None,
    no_cloudevents: bool,
) -> str:
    """Encode and send one event; its id (the record's coordinates without CloudEvents)."""
    from bridge.codec import AVRO, JSON, SchemaCatalog
    from bridge.envelope import encode_event
    from bridge.wiring import open_registry_writer, started_producer

    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    body: bytes | None = None
    content_type = JSON if spec.format == "json" else AVRO
    if spec.registry and settings.schema_registry_url is None:
        raise ConfigError(f"--format {spec.format} needs KTB_SCHEMA_REGISTRY_URL")
    async with open_registry_writer(settings, catalog, {topic: spec}) as writer:
        if writer is not None:
            framed = await writer.encode(topic, spec, type_name, data)
            body, content_type = framed.body, framed.content_type
    record = encode_event(
        catalog,
        type=type_name,
        data=data,
        id=event_id,
        source=source,
        key=key,
        tenant_id=tenant,
        content_type=content_type,
        body=body,
    )
    headers = [] if no_cloudevents else record.headers
    async with started_producer(settings) as producer:
        meta = await producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=headers
        )
    if no_cloudevents:
        return f"{topic}-{meta.partition}-{meta.offset}"
    return event_id


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Kafka topic")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record")] = False,
    since: Annotated[
        float, typer.Option(help="Start at records newer than this many seconds (0: only new)")
    ] = 60.0,
    max: Annotated[int | None, typer.Option("--max", help="Stop after N records")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after S seconds without a new record")
    ] = None,
) -> None:
    """Print records as JSON lines: topic, partition, offset, key, headers, data|error."""
    from bridge.cli.tail import tail_topic

    settings = load_settings()
    try:
        count = run_loop(
            tail_topic(
                settings,
                topic,
                from_beginning=from_beginning,
                since_s=since,
                max_records=max,
                idle_timeout=timeout,
                emit=lambda line: typer.echo(line),
            )
        )
    except BridgeError as exc:
        fail(exc.message, 1)
    if max is not None and count < max:
        raise typer.Exit(1)


# --- routes -----------------------------------------------------------------------------


@routes_app.command("check")
def routes_check(
    path: Annotated[
        Path | None, typer.Argument(help="Routes file (default: KTB_ROUTES_FILE)")
    ] = None,
) -> None:
    """Check every route's templates, conditions and arguments against the schemas."""
    from bridge.codec import SchemaCatalog
    from bridge.routes import RoutesConfig, check_routes

    settings = load_settings()
    file = path or settings.routes_file
    try:
        config = RoutesConfig.load(file)
        catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    except ConfigError as exc:
        fail(exc.message, 1)
    problems = check_routes(config, catalog)
    registry = ""
    if settings.schema_registry_url is not None:
        problems += run(_check_registered(settings, config, catalog))
        registry = f", checked against the Schema Registry at {settings.schema_registry_url}"
    if problems:
        typer.echo(f"{file}: {len(problems)} problem(s):", err=True)
        for p in problems:
            typer.echo(f"  - {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: {len(config.routes)} routes ok{registry}")


async def _check_registered(
    settings: Settings, config: RoutesConfig, catalog: SchemaCatalog
) -> list[RouteProblem]:
    """``check_registered`` with a client of its own, closed after."""
    from bridge.registry.subjects import check_registered, client_from_settings

    client = client_from_settings(settings)
    try:
        return await check_registered(config, catalog, client)
    finally:
        await client.aclose()


cli_replay.register(app)
cli_dlq.register(app)
cli_policies.register(app)
cli_schemas.register(app)


def main() -> None:
    """Console-script entry point."""
    whole_stdio()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
