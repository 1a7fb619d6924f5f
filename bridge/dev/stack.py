"""The local stack: real Apache Kafka (KRaft), the Temporal dev server and, when asked
for, PostgreSQL (the provenance read model) and a Schema Registry (Apicurio) as child
processes.

``LocalStack`` starts them (or reuses services already answering on their ports) for
``ktb dev``, the tests, the benchmarks and the chaos harness; the broker, the servers
and the registry live in ``bridge.dev.kafka``, ``bridge.dev.temporal``,
``bridge.dev.postgres`` and ``bridge.dev.registry``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.dev.kafka import KAFKA_VERSION, KafkaBroker, new_cluster_id, wait_kafka
from bridge.dev.postgres import PostgresServer, database_url, wait_postgres
from bridge.dev.processes import Service, free_port, port_open, tail
from bridge.dev.registry import SchemaRegistry, registry_url, wait_registry
from bridge.dev.temporal import TemporalServer, ensure_search_attributes, wait_temporal

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "LocalStack",
    "PostgresServer",
    "SchemaRegistry",
    "Service",
    "TemporalServer",
    "database_url",
    "ensure_search_attributes",
    "free_port",
    "new_cluster_id",
    "port_open",
    "registry_url",
    "tail",
    "wait_kafka",
    "wait_postgres",
    "wait_registry",
    "wait_temporal",
]


@dataclass
class LocalStack:
    """Kafka and Temporal, PostgreSQL when ``postgres_port`` is set and a Schema Registry
    when ``registry_port`` is, for ``ktb dev`` and the tests; reuses services already
    running. The database gets the current schema (``bridge.store.migrations``)."""

    data_dir: Path
    kafka_port: int = 9092
    kafka_controller_port: int | None = None
    temporal_port: int = 7233
    temporal_ui_port: int | None = None
    headless: bool = False
    temporal_in_memory: bool = False
    registry_port: int | None = None
    postgres_port: int | None = None
    postgres_durable: bool = True
    search_attributes: Mapping[str, str] = field(default_factory=dict)
    """Custom search attributes the routes set (``RoutesConfig.search_attributes``),
    registered in Temporal beside the bridge's own."""
    kafka: KafkaBroker | None = None
    temporal: TemporalServer | None = None
    registry: SchemaRegistry | None = None
    postgres: PostgresServer | None = None
    reused: list[str] = field(default_factory=list)

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap address of the stack's broker."""
        return f"localhost:{self.kafka_port}"

    @property
    def temporal_address(self) -> str:
        """gRPC address of the stack's Temporal frontend."""
        return f"localhost:{self.temporal_port}"

    @property
    def database_url(self) -> str | None:
        """The provenance database (``KTB_DATABASE_URL``); ``None`` when the stack runs none."""
        return None if self.postgres_port is None else database_url(self.postgres_port)

    @property
    def schema_registry_url(self) -> str | None:
        """The registry's Confluent-compatible API; ``None`` when the stack runs none."""
        return None if self.registry_port is None else registry_url(self.registry_port)

    async def start(self, timeout: float = 120.0) -> None:
        """Start (or reuse) the services and wait until each answers."""
        waits: list[Coroutine[Any, Any, None]] = []
        if port_open(self.kafka_port):
            self.reused.append("kafka")
            waits.append(wait_kafka(self.kafka_bootstrap, timeout))
        else:
            self.kafka = KafkaBroker(
                self.data_dir / "kafka",
                self.kafka_port,
                self.kafka_controller_port or self.kafka_port + 1,
            )
            self.kafka.start()
            waits.append(self.kafka.wait_ready(timeout))
        if port_open(self.temporal_port):
            self.reused.append("temporal")
            waits.append(self._reuse_temporal(timeout))
        else:
            self.temporal = TemporalServer(
                self.data_dir / "temporal",
                self.temporal_port,
                self.temporal_ui_port,
                self.headless,
                self.temporal_in_memory,
                self.search_attributes,
            )
            self.temporal.start()
            waits.append(self.temporal.wait_ready(timeout))
        try:
            if self.postgres_port is not None:
                waits.append(self._start_postgres(self.postgres_port, timeout))
            if self.registry_port is not None:
                waits.append(self._start_registry(self.registry_port, timeout))
        except BaseException:
            for wait in waits:
                wait.close()
            self.stop()
            raise
        try:
            await asyncio.gather(*waits)
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self, port: int, timeout: float) -> Coroutine[Any, Any, None]:
        """Start (or reuse) PostgreSQL; what waits until it answers and migrates it."""
        if port_open(port):
            self.reused.append("postgres")
            return self._migrate(wait_postgres(port, timeout))
        self.postgres = PostgresServer(self.data_dir / "postgres", port, self.postgres_durable)
        self.postgres.start()
        return self._migrate(self.postgres.wait_ready(timeout))

    async def _migrate(self, ready: Coroutine[Any, Any, None]) -> None:
        from bridge.settings import Settings
        from bridge.wiring import migrate_database

        await ready
        assert self.database_url is not None
        await migrate_database(Settings(database_url=self.database_url))

    def _start_registry(self, port: int, timeout: float) -> Coroutine[Any, Any, None]:
        """Start (or reuse) the registry; what waits until it answers."""
        if port_open(port):
            self.reused.append("registry")
            return wait_registry(registry_url(port), timeout)
        self.registry = SchemaRegistry(self.data_dir / "registry", port)
        # The first start downloads and unpacks Apicurio (seconds); later ones do not.
        self.registry.start()
        return self.registry.wait_ready(timeout)

    async def _reuse_temporal(self, timeout: float) -> None:
        await wait_temporal(self.temporal_address, timeout)
        await ensure_search_attributes(self.temporal_address, extra=self.search_attributes)

    def services(self) -> Sequence[Service]:
        """The child processes this stack started (not the reused ones)."""
        started = (self.kafka, self.temporal, self.postgres, self.registry)
        return [s.service for s in started if s and s.service]

    def stop(self) -> None:
        """Stop the services this stack started, the registry first, Kafka last."""
        for svc in reversed(self.services()):
            svc.stop()
        if self.postgres is not None:
            self.postgres.stop()  # stopped already; removes a cluster that is not durable
