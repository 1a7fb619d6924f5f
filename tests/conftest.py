"""Fixtures: real Kafka, Temporal and Schema Registry for the integration tests, Kafka in
memory for the unit tests of the pipeline, the schemas for all.

The machinery behind them lives in ``tests.support`` (``stack`` picks the services).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from bridge.codec import SchemaCatalog
from bridge.dev.stack import LocalStack
from bridge.kafka import ensure_topics
from bridge.settings import REPO_ROOT, Settings
from tests.support import Services, StackInfo, local_stack, session_stack
from tests.support.memory import MemoryKafka


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """Real Kafka, Temporal and Schema Registry for the whole session (see
    ``tests.support.stack``)."""
    with session_stack(lambda: tmp_path_factory.mktemp("stack")) as info:
        yield info


@pytest.fixture(scope="session")
def catalog() -> SchemaCatalog:
    """The repository's event schemas."""
    return SchemaCatalog.from_dir(REPO_ROOT / "schemas")


@pytest_asyncio.fixture(scope="session")
async def client(stack: StackInfo) -> Client:
    """A Temporal client for the session."""
    return await Client.connect(stack.temporal_address)


@pytest.fixture
def memory_kafka(monkeypatch: pytest.MonkeyPatch) -> MemoryKafka:
    """Kafka in memory, behind ``bridge.kafka.consumer`` and ``start`` for this test."""
    return MemoryKafka().install(monkeypatch)


@pytest.fixture
def uid() -> str:
    """A short unique suffix for topics, task queues and workflow ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(stack: StackInfo, uid: str) -> Settings:
    """Settings pointing at the test services (the registry too), with a unique
    consumer group."""
    return Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        temporal_address=stack.temporal_address,
        schema_registry_url=stack.schema_registry_url,
        database_url=stack.database_url,
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
    """Tests under ``integration/`` use the session's real services: mark them
    ``integration``. The chaos tests start services of their own and mark themselves."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A Kafka + Temporal pair of this test's own, for tests that stop or kill them."""
    with local_stack(tmp_path / "stack") as local:
        yield local
