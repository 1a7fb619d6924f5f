"""Writing in Schema Registry framing, against the real Kafka, Temporal and Apicurio Registry.

A worker built by ``bridge.wiring.open_worker`` reads the routes file's ``publish:``
section; what it publishes is read back with confluent-kafka's own
``DeserializingConsumer`` and ``AvroDeserializer``. ``ktb schemas`` and ``ktb produce``
run through Typer's ``CliRunner`` (in a thread: they run their own event loop).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import StringDeserializer
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError
from temporalio.worker import Worker
from typer.testing import CliRunner

from bridge.cli.main import app
from bridge.cli.tail import tail_topic
from bridge.codec import SchemaCatalog
from bridge.envelope import Event
from bridge.observability.telemetry import open_telemetry
from bridge.settings import REPO_ROOT, Settings
from bridge.wiring import open_bridge, open_worker
from services.common import consume_events
from tests.integration.saga_workflows import Publisher as PublisherWorkflow
from tests.support import Services, eventually, order_data
from tests.workflows import Noop

FAILED = "com.example.order.failed"
PLACED = "com.example.order.placed"
DATA = {"order_id": "o-1", "customer_id": "c-1", "step": "charge_payment", "reason": "declined"}


def routes_file(path: Path, publish: dict[str, Any], routes: Sequence[Any] = ()) -> Path:
    """A routes file with ``publish:`` settings (and routes, for a bridge)."""
    path.write_text(yaml.safe_dump({"routes": list(routes), "publish": publish}))
    return path


def worker_settings(settings: Settings, routes: Path) -> Settings:
    return settings.model_copy(update={"routes_file": routes})


async def publish_once(
    settings: Settings, client: Client, task_queue: str, topic: str, workflow_id: str
) -> str:
    """Run ``KtbTestPublisher`` on a worker wired as ``ktb worker`` wires one: the ``ce_id``."""
    with open_telemetry(settings, "worker") as telemetry:
        async with open_worker(settings, telemetry, task_queue, [PublisherWorkflow]):
            result: str = await client.execute_workflow(
                PublisherWorkflow.run,
                args=[topic, FAILED, DATA],
                id=workflow_id,
                task_queue=task_queue,
                execution_timeout=timedelta(seconds=60),
            )
    return result


def read_with_confluent(
    settings: Settings, topic: str, kind: str = "confluent-avro", timeout: float = 30.0
) -> Any:
    """The first record of ``topic`` through confluent-kafka's own deserializer of ``kind``,
    the writer schema fetched by the id in the record."""
    assert settings.schema_registry_url is not None
    registry = SchemaRegistryClient({"url": settings.schema_registry_url})
    deserializer = (
        AvroDeserializer(registry)
        if kind == "confluent-avro"
        else JSONDeserializer(None, schema_registry_client=registry)
    )
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"confluent-{topic}",
            "auto.offset.reset": "earliest",
            "key.deserializer": StringDeserializer(),
            "value.deserializer": deserializer,
        }
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                return message
        raise AssertionError(f"no record on {topic} within {timeout:.0f} s")
    finally:
        consumer.close()


def cli(args: list[str], settings: Settings, **env: str) -> tuple[int, str]:
    """``ktb <args>`` against the test services; exit code and output (stderr included)."""
    assert settings.schema_registry_url is not None
    environment = {
        "KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KTB_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "KTB_ROUTES_FILE": str(settings.routes_file),
        **env,
    }
    result = CliRunner().invoke(app, args, env=environment)
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", ["confluent-avro", "confluent-json"])
async def test_an_outcome_on_a_registry_topic_reads_with_confluents_deserializer(
    settings: Settings, client: Client, topics: dict[str, str], uid: str, tmp_path: Path, kind: str
):
    topic = topics["outcomes"]
    spec = {"format": kind, "subject_strategy": "topic_record", "auto_register": True}
    routes = routes_file(tmp_path / "routes.yaml", {topic: spec})
    ce_id = await publish_once(
        worker_settings(settings, routes), client, f"q-{uid}", topic, f"pub-{uid}"
    )
    message = await asyncio.to_thread(read_with_confluent, settings, topic, kind)
    assert message.value() == DATA
    assert message.key() == "k-1"
    headers = {name: value.decode() for name, value in message.headers()}
    assert headers["ce_id"] == ce_id
    assert headers["ce_type"] == FAILED
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_correlationid"] == f"pub-{uid}"
    assert headers["content-type"] == (
        "application/avro" if kind == "confluent-avro" else "application/json"
    )
    registry = SchemaRegistryClient({"url": settings.schema_registry_url})
    latest = registry.get_latest_version(f"{topic}-{FAILED}")
    assert latest.version == 1
    assert latest.schema.schema_type == ("AVRO" if kind == "confluent-avro" else "JSON")
    # ktb tail decodes it as the bridge does: the writer schema from the registry by id.
    lines: list[str] = []
    count = await tail_topic(
        settings, topic, from_beginning=True, max_records=1, idle_timeout=20, emit=lines.append
    )
    assert count == 1
    shown = json.loads(lines[0])
    assert shown["data"] == DATA
    assert shown["headers"]["ce_id"] == ce_id
    # The example services' consumer loop (notifications) reads it too.
    seen: list[Event] = []
    stop = asyncio.Event()

    async def handle(events: list[Event]) -> None:
        seen.extend(events)
        stop.set()

    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    await asyncio.wait_for(
        consume_events(settings, catalog, [topic], f"svc-{uid}", handle, stop), 60
    )
    [event] = seen
    assert (event.id, event.type, dict(event.data)) == (ce_id, FAILED, DATA)


async def test_without_auto_register_a_missing_subject_fails_the_publication_for_good(
    settings: Settings,
    client: Client,
    services: Services,
    topics: dict[str, str],
    uid: str,
    tmp_path: Path,
):
    topic = topics["outcomes"]
    routes = routes_file(tmp_path / "routes.yaml", {topic: {"format": "confluent-avro"}})
    with pytest.raises(WorkflowFailureError) as raised:
        await publish_once(
            worker_settings(settings, routes), client, f"q-{uid}", topic, f"nosub-{uid}"
        )
    failure = raised.value.cause
    assert isinstance(failure, ActivityError)
    assert failure.retry_state is RetryState.NON_RETRYABLE_FAILURE
    cause = failure.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "SubjectNotRegisteredError"
    assert f"{topic}-value" in cause.message
    assert cause.details == ({"topic": topic, "subject": f"{topic}-value"},)
    assert sum((await services.end_offsets(topic)).values()) == 0


async def test_schemas_register_then_check_and_a_breaking_change_fails_the_check(
    settings: Settings, client: Client, topics: dict[str, str], uid: str, tmp_path: Path
):
    topic = topics["outcomes"]
    spec = {"format": "confluent-avro", "types": [FAILED]}
    routes = routes_file(tmp_path / "routes.yaml", {topic: spec})
    local = worker_settings(settings, routes)
    subject = f"{topic}-value"

    code, output = await asyncio.to_thread(cli, ["schemas", "check"], local)
    assert code == 0, output
    assert f"{subject}: not registered yet" in output
    code, output = await asyncio.to_thread(cli, ["schemas", "register"], local)
    assert code == 0, output
    assert f"{subject}: {FAILED} version 1" in output
    code, output = await asyncio.to_thread(cli, ["schemas", "check"], local)
    assert code == 0, output
    assert f"{subject} version 1 (BACKWARD): {FAILED} compatible" in output

    # Registered first, the subject takes a worker's publication without auto_register.
    ce_id = await publish_once(local, client, f"q-{uid}", topic, f"pre-{uid}")
    message = await asyncio.to_thread(read_with_confluent, settings, topic)
    assert dict(message.headers())["ce_id"] == ce_id.encode()

    # A new required field without a default: v1 data cannot be read under BACKWARD.
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO_ROOT / "schemas", schemas)
    changed = schemas / "order" / "failed.avsc"
    schema = json.loads(changed.read_text())
    schema["fields"].append({"name": "attempt", "type": "int"})
    changed.write_text(json.dumps(schema))
    code, output = await asyncio.to_thread(
        cli, ["schemas", "check"], local, KTB_SCHEMAS_DIR=str(schemas)
    )
    assert code == 1, output
    assert f"{subject} version 1 (BACKWARD): {FAILED} INCOMPATIBLE" in output
    assert "attempt" in output
    # And routes check names the publish: topic whose subject lacks the changed schema.
    code, output = await asyncio.to_thread(
        cli, ["routes", "check", str(routes)], local, KTB_SCHEMAS_DIR=str(schemas)
    )
    assert code == 1, output
    assert f"subject {subject!r} does not hold {FAILED}" in output


@pytest.fixture
async def bridge_running(
    settings: Settings, client: Client, topics: dict[str, str], uid: str, tmp_path: Path
) -> AsyncIterator[Settings]:
    """``ktb bridge``'s composition root on a start route for ``order.placed``, and a worker."""
    route = {
        "name": "start",
        "topic": topics["orders"],
        "type": PLACED,
        "action": "start",
        "workflow": "KtbTestNoop",
        "task_queue": f"q-{uid}",
        "workflow_id": f"sr-{uid}-{{data.order_id}}",
    }
    routes = routes_file(tmp_path / "routes.yaml", {}, [route])
    local = settings.model_copy(update={"routes_file": routes})
    with open_telemetry(local, "bridge") as telemetry:
        async with (
            Worker(client, task_queue=f"q-{uid}", workflows=[Noop]),
            open_bridge(local, telemetry) as consumer,
        ):
            task = asyncio.create_task(consumer.run())
            try:
                yield local
            finally:
                consumer.stop()
                await asyncio.wait_for(task, 60)


@pytest.mark.parametrize("headers", [[], ["--no-cloudevents"]], ids=["cloudevents", "plain"])
async def test_ktb_produce_confluent_avro_starts_the_workflow(
    bridge_running: Settings, client: Client, topics: dict[str, str], uid: str, headers: list[str]
):
    order = f"o-{uid}-{len(headers)}"
    args = [
        "produce", topics["orders"], "--type", PLACED, "--key", order,
        "--data", json.dumps(order_data(order)), "--format", "confluent-avro",
        "--subject-strategy", "record", "--auto-register", *headers,
    ]  # fmt: skip
    code, output = await asyncio.to_thread(cli, args, bridge_running)
    assert code == 0, output
    handle = client.get_workflow_handle(f"sr-{uid}-{order}")

    async def started() -> bool:
        try:
            await handle.describe()
        except RPCError:
            return False
        return True

    await eventually(started, 60)
    assert await handle.result() == order  # the workflow got the decoded data
