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
from bridge.settings import REPO_ROOT, Settings
from tests.support import Services, StackInfo, local_stack, session_stack
from tests.support.browser import SKIPPED_BROWSER, screenshots
from tests.support.kafka import unique_topics
from tests.support.memory import MemoryKafka
from tests.support.stack import stack_settings


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
    return stack_settings(stack, f"test-{uid}")


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
    return await unique_topics(settings, uid)


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when the browser tests were skipped for want of a Chromium (CI installs
    one), and where the screenshots of the ones that ran are."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if SKIPPED_BROWSER in str(getattr(report, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.write_sep(
            "!", f"{SKIPPED_BROWSER}: {len(skipped)} console tests did not run", red=True, bold=True
        )
        terminalreporter.write_line(
            "Install Debian's `chromium` (apt-get install chromium) or set KTB_CHROMIUM.",
            red=True,
        )
    if screenshots:
        terminalreporter.write_line(
            f"console screenshots: {screenshots[0].parent} ({len(screenshots)} files)"
        )
