"""``ktb schemas register|check``: the local schemas in the Schema Registry.

The subjects are those the routes file's ``publish:`` section names (a registry
format, its subject strategy, the types it lists); without such a topic, every
local schema under its record name. Exit codes: 0 done (every schema compatible),
1 the registry refused, did not answer or found a schema incompatible, 2 bad input
(no registry configured, an invalid routes file or schema).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bridge.cli.common import fail, load_settings, run
from bridge.errors import ConfigError

if TYPE_CHECKING:
    from bridge.codec import SchemaCatalog
    from bridge.registry.subjects import Compatibility, PlannedSubject, Registered
    from bridge.settings import Settings

schemas_app = typer.Typer(
    help="Register the local schemas in the Schema Registry and check their compatibility.",
    no_args_is_help=True,
)
LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
RoutesOption = Annotated[
    Path | None, typer.Option("--routes", help="Routes file (default: KTB_ROUTES_FILE)")
]


def register(app: typer.Typer) -> None:
    """Add the ``schemas`` command group to the ``ktb`` app."""
    app.add_typer(schemas_app, name="schemas")


def _plan(settings: Settings) -> tuple[SchemaCatalog, list[PlannedSubject]]:
    """The local schemas and the subjects they go under; notes on topics left out."""
    from bridge.codec import SchemaCatalog
    from bridge.registry.subjects import subject_plan
    from bridge.routes import RoutesConfig

    if settings.schema_registry_url is None:
        fail("no Schema Registry is configured: set KTB_SCHEMA_REGISTRY_URL")
    try:
        catalog = SchemaCatalog.from_dir(settings.schemas_dir)
        config = RoutesConfig.load(settings.routes_file) if settings.routes_file.exists() else None
        plan, notes = subject_plan(config, catalog)
    except ConfigError as exc:
        fail(exc.message)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    return catalog, plan


@schemas_app.command("register")
def schemas_register(
    routes: RoutesOption = None,
    compatibility: Annotated[
        str, typer.Option(help="Level set on subjects that have none of their own")
    ] = "BACKWARD",
) -> None:
    """Register every local schema under its configured subject (idempotent)."""
    from bridge.registry.subjects import client_from_settings
    from bridge.registry.subjects import register as register_all

    if compatibility.upper() not in LEVELS:
        fail(f"--compatibility must be one of {', '.join(LEVELS)}, not {compatibility!r}")
    settings = load_settings(routes_file=routes)
    catalog, plan = _plan(settings)

    async def go() -> list[Registered]:
        client = client_from_settings(settings)
        try:
            return await register_all(client, catalog, plan, compatibility.upper())
        finally:
            await client.aclose()

    for done in run(go()):
        typer.echo(
            f"{done.subject}: {done.type} version {done.version} (schema id {done.schema_id})"
        )


@schemas_app.command("check")
def schemas_check(routes: RoutesOption = None) -> None:
    """Test every local schema against its subject at the subject's compatibility level;
    exit 1 naming each subject, version and reason that breaks."""
    from bridge.registry.subjects import check, client_from_settings

    settings = load_settings(routes_file=routes)
    catalog, plan = _plan(settings)

    async def go() -> list[Compatibility]:
        client = client_from_settings(settings)
        try:
            return await check(client, catalog, plan)
        finally:
            await client.aclose()

    results: list[Compatibility] = run(go())
    broken = [r for r in results if not r.compatible]
    for result in results:
        typer.echo(str(result), err=not result.compatible)
    if broken:
        typer.echo(f"{len(broken)} of {len(results)} schemas incompatible", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(results)} schemas compatible")
