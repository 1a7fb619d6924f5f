"""``ktb provision``: topics with partition counts from configuration, grown on re-run."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from typer.testing import CliRunner

from bridge import kafka
from bridge.cli.main import app
from bridge.dlq import REDRIVES_TOPIC
from bridge.kafka.topics import ensure_topics
from bridge.settings import Settings
from bridge.temporal.attributes import SEARCH_ATTRIBUTES
from bridge.wiring import provision


def deployment(tmp_path: Path, uid: str, settings: Settings) -> Settings:
    """Settings whose routes file declares three topics of this test."""
    routes = {
        "routes": [
            {
                "name": "start",
                "topic": f"prov-in-{uid}",
                "type": "com.example.order.placed",
                "action": "start",
                "workflow": "W",
                "task_queue": "q",
                "workflow_id": "w-{data.order_id}",
            }
        ],
        "topics": {f"prov-out-{uid}": 2, f"prov-comp-{uid}": 1},
    }
    file = tmp_path / "routes.yaml"
    file.write_text(yaml.safe_dump(routes))
    return Settings(
        **{
            **settings.model_dump(),
            "routes_file": file,
            "provenance_topic": f"prov-provenance-{uid}",
        }
    )


async def partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partitions per topic as the broker reports them."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def test_topics_created_then_grown(
    settings: Settings, client: Client, uid: str, tmp_path: Path
) -> None:
    s = deployment(tmp_path, uid, settings)
    names = [
        f"prov-in-{uid}",
        f"prov-in-{uid}.dlq",
        f"prov-out-{uid}",
        f"prov-comp-{uid}",
        f"prov-provenance-{uid}",
    ]
    first = await provision(s)
    first.created.pop(REDRIVES_TOPIC, None)  # shared by the session: created once, by any test
    assert first.created == {names[0]: 3, names[1]: 1, names[2]: 2, names[3]: 1, names[4]: 3}
    assert await partition_counts(s, names) == first.created

    second = await provision(s, min_partitions=4)
    assert second.created == {}
    assert second.grown == {names[0]: (3, 4), names[2]: (2, 4), names[3]: (1, 4), names[4]: (3, 4)}
    assert second.unchanged == [names[1], REDRIVES_TOPIC]  # dead letters and marks keep theirs
    assert await partition_counts(s, names) == {
        names[0]: 4, names[1]: 1, names[2]: 4, names[3]: 4, names[4]: 4
    }  # fmt: skip

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    assert set(SEARCH_ATTRIBUTES) <= set(listed.custom_attributes)


async def test_new_partitions_take_writes_as_soon_as_provisioning_returns(
    settings: Settings, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the wait for each leader to serve, writes right after a creation were
    # refused (NOT_LEADER_OR_FOLLOWER) and retried by the producer, which logs each.
    caplog.set_level(logging.WARNING, logger="aiokafka")
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for n in range(6):
            topic = f"prov-fresh-{uid}-{n}"
            assert await ensure_topics(settings, {topic: 6}) == [topic]
            sent = [await producer.send(topic, b"x", partition=p) for p in range(6)]
            offsets = [meta.offset for meta in await asyncio.gather(*sent)]
            assert offsets == [0] * 6
    finally:
        await producer.stop()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")]
    refused = [m for m in logged if f"prov-fresh-{uid}" in m or "NotLeader" in m]
    assert refused == []


def test_provision_command_is_idempotent(settings: Settings, uid: str, tmp_path: Path) -> None:
    s = deployment(tmp_path, uid, settings)
    env = {
        "KTB_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "KTB_TEMPORAL_ADDRESS": s.temporal_address,
        "KTB_ROUTES_FILE": str(s.routes_file),
        "KTB_PROVENANCE_TOPIC": s.provenance_topic,
        "KTB_DATABASE_URL": s.database_url.get_secret_value(),
    }
    runner = CliRunner()
    first = runner.invoke(app, ["provision", "--partitions", "2"], env=env)
    assert first.exit_code == 0, first.output
    assert f"created prov-in-{uid} (3 partitions)" in first.output
    assert f"created prov-comp-{uid} (2 partitions)" in first.output
    again = runner.invoke(app, ["provision", "--partitions", "2"], env=env)
    assert again.exit_code == 0, again.output
    assert "created" not in again.output
    assert "6 topics unchanged" in again.output  # with ktb.redrives
    assert "database schema migrations applied: none missing" in again.output
