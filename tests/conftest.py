"""Session fixtures: real Kafka and real Temporal.

Order of preference: ``KTB_KAFKA_BOOTSTRAP``/``KTB_TEMPORAL_ADDRESS`` if set; else
testcontainers when a Docker engine answers; else the local launcher (Kafka from
Maven Central jars on the system Java, the ``temporal`` dev server) on free ports
with a temporary data directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from bridge.codec import SchemaCatalog
from bridge.dev.stack import LocalStack, ensure_search_attributes, free_port
from bridge.kafka import ensure_topics
from bridge.settings import REPO_ROOT, Settings
from tests.support import Services


@dataclass
class StackInfo:
    """Where the test services are, and the launcher if this session started them."""

    kafka_bootstrap: str
    temporal_address: str
    local: LocalStack | None = None


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # any failure means: no usable engine
        return False


def _containers() -> tuple[StackInfo, list[object]]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer

    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
    kafka.start()
    temporal = (
        DockerContainer("temporalio/temporal:latest")
        .with_command("server start-dev --ip 0.0.0.0 --headless")
        .with_exposed_ports(7233)
    )
    temporal.start()
    wait_for_logs(temporal, "Temporal Server", timeout=60)
    address = f"{temporal.get_container_host_ip()}:{temporal.get_exposed_port(7233)}"
    return StackInfo(kafka.get_bootstrap_server(), address), [kafka, temporal]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """Real Kafka and Temporal for the whole session."""
    kafka_env = os.environ.get("KTB_KAFKA_BOOTSTRAP")
    temporal_env = os.environ.get("KTB_TEMPORAL_ADDRESS")
    if kafka_env and temporal_env:
        asyncio.run(ensure_search_attributes(temporal_env))
        yield StackInfo(kafka_env, temporal_env)
        return
    if os.environ.get("KTB_TEST_DOCKER", "auto") != "off" and _docker_answers():
        info, containers = _containers()
        asyncio.run(ensure_search_attributes(info.temporal_address))
        try:
            yield info
        finally:
            for c in containers:
                c.stop()  # type: ignore[attr-defined]
        return
    local = LocalStack(
        tmp_path_factory.mktemp("stack"),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        temporal_port=free_port(),
        headless=True,
    )
    asyncio.run(local.start())
    try:
        yield StackInfo(local.kafka_bootstrap, local.temporal_address, local)
    finally:
        local.stop()


@pytest.fixture(scope="session")
def catalog() -> SchemaCatalog:
    """The repository's event schemas."""
    return SchemaCatalog.from_dir(REPO_ROOT / "schemas")


@pytest_asyncio.fixture(scope="session")
async def client(stack: StackInfo) -> Client:
    """A Temporal client for the session."""
    return await Client.connect(stack.temporal_address)


@pytest.fixture
def uid() -> str:
    """A short unique suffix for topics, task queues and workflow ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(stack: StackInfo, uid: str) -> Settings:
    """Settings pointing at the test services, with a unique consumer group."""
    return Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        temporal_address=stack.temporal_address,
        group_id=f"test-{uid}",
        commit_interval_s=0.2,
        retry_initial_s=0.1,
        retry_max_s=1.0,
        shutdown_timeout_s=10,
    )


@pytest_asyncio.fixture
async def services(
    stack: StackInfo, settings: Settings, catalog: SchemaCatalog, client: Client
) -> AsyncIterator[Services]:
    """Producer, topic helpers and readers bound to the test services."""
    svc = Services(settings, catalog, client)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest_asyncio.fixture
async def topics(settings: Settings, uid: str) -> dict[str, str]:
    """Unique topic names for one test, created with 3 partitions (DLQs with 1)."""
    names = {
        "orders": f"orders-{uid}",
        "payments": f"payments-{uid}",
        "outcomes": f"orders.outcomes-{uid}",
        "compensations": f"orders.compensations-{uid}",
    }
    spec = {n: 3 for n in names.values()}
    spec.update({f"{names['orders']}.dlq": 1, f"{names['payments']}.dlq": 1})
    await ensure_topics(settings, spec)
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under ``integration/`` and ``chaos/`` use the real services."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A Kafka + Temporal pair of this test's own, for tests that stop or kill them."""
    local = LocalStack(
        tmp_path / "stack",
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        temporal_port=free_port(),
        headless=True,
    )
    asyncio.run(local.start())
    try:
        yield local
    finally:
        local.stop()
