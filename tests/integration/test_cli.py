"""The ``ktb`` command line against real Kafka."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bridge.kafka import ensure_topics
from bridge.settings import REPO_ROOT
from tests.support import order_data


def ktb(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )


def cli_env(settings) -> dict[str, str]:
    import os

    return {**os.environ, "KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}


async def test_produce_then_tail(settings, uid) -> None:
    topic = f"cli-{uid}"
    await ensure_topics(settings, {topic: 1})
    env = cli_env(settings)
    out = ktb("produce", topic, "--type", "com.example.order.placed", "--key", "o-9",
              "--tenant", "acme", "--data", json.dumps(order_data("o-9")), env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    event_id = out.stdout.strip()
    tail = ktb("tail", topic, "--from-beginning", "--max", "1", "--timeout", "20", env=env)
    assert tail.returncode == 0, tail.stderr
    line = json.loads(tail.stdout.strip().splitlines()[0])
    assert set(line) == {"topic", "partition", "offset", "key", "headers", "data"}
    assert line["key"] == "o-9"
    assert line["headers"]["ce_id"] == event_id
    assert line["headers"]["ce_tenantid"] == "acme"
    assert line["data"] == order_data("o-9")


async def test_tail_reports_undecodable_records(services, settings, uid) -> None:
    topic = f"cli-bad-{uid}"
    await ensure_topics(settings, {topic: 1})
    await services.produce_raw(topic, b"\x00garbage", [("ce_type", b"com.example.order.placed")])
    tail = ktb("tail", topic, "--from-beginning", "--max", "1", "--timeout", "20",
               env=cli_env(settings))  # fmt: skip
    line = json.loads(tail.stdout.strip().splitlines()[0])
    assert "error" in line and "data" not in line


async def test_produce_rejects_data_that_does_not_fit(services, settings, uid) -> None:
    topic = f"cli-reject-{uid}"
    await ensure_topics(settings, {topic: 1})
    data = {**order_data("o-1"), "total_cents": "lots"}
    out = ktb("produce", topic, "--type", "com.example.order.placed", "--data", json.dumps(data),
              env=cli_env(settings))  # fmt: skip
    assert out.returncode != 0
    assert "total_cents" in out.stderr
    assert await services.end_offsets(topic) == {0: 0}


def test_produce_rejects_unknown_type_and_bad_json() -> None:
    out = ktb("produce", "t", "--type", "com.example.nope", "--data", "{}")
    assert out.returncode == 2 and "com.example.nope" in out.stderr
    out = ktb("produce", "t", "--type", "com.example.order.placed", "--data", "{oops")
    assert out.returncode == 2 and "JSON" in out.stderr


def test_routes_check_names_route_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "routes:\n"
        "  - name: start-order\n"
        "    topic: orders\n"
        "    type: com.example.order.placed\n"
        "    action: start\n"
        "    workflow: OrderFulfillment\n"
        "    task_queue: orders\n"
        '    workflow_id: "order-{data.order_number}"\n'
    )
    out = ktb("routes", "check", str(bad))
    assert out.returncode == 1
    assert "start-order" in out.stderr and "order_number" in out.stderr
    good = ktb("routes", "check", str(REPO_ROOT / "routes.yaml"))
    assert good.returncode == 0, good.stderr
