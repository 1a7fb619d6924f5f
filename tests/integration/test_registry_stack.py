"""The session's Schema Registry is a real Apicurio Registry speaking the Confluent API."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from bridge.dev.stack import LocalStack
from bridge.errors import StackError
from bridge.settings import REPO_ROOT, Settings
from tests.support import StackInfo


def test_the_registry_lists_its_subjects(stack: StackInfo, settings: Settings) -> None:
    assert settings.schema_registry_url == stack.schema_registry_url
    assert stack.schema_registry_url.endswith("/apis/ccompat/v7")
    with urllib.request.urlopen(f"{stack.schema_registry_url}/subjects", timeout=10) as reply:
        assert reply.status == 200
        assert isinstance(json.loads(reply.read()), list)


def test_a_schema_registered_with_confluent_kafka_comes_back_by_id(
    stack: StackInfo, uid: str
) -> None:
    client = SchemaRegistryClient({"url": stack.schema_registry_url})
    subject = f"orders-{uid}-value"
    record = {
        "type": "record",
        "name": "Placed",
        "namespace": f"test.registry.r{uid}",
        "fields": [
            {"name": "order_id", "type": "string"},
            {"name": "total_cents", "type": "long"},
        ],
    }
    schema_id = client.register_schema(subject, Schema(json.dumps(record), "AVRO"))
    # A fresh client has nothing cached: the schema comes from the registry itself.
    fresh = SchemaRegistryClient({"url": stack.schema_registry_url})
    fetched = fresh.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert fetched.schema_str is not None
    assert json.loads(fetched.schema_str) == record
    latest = fresh.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert subject in fresh.get_subjects()
    # Registering the same schema again is the same id, not a new version.
    assert client.register_schema(subject, Schema(json.dumps(record), "AVRO")) == schema_id
    assert fresh.get_versions(subject) == [1]


def test_the_compose_health_check_passes_against_a_real_registry(stack: StackInfo) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    probe = compose["services"]["registry"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "bash", "-c"]
    address = urlsplit(stack.schema_registry_url)
    script = probe[3].replace("127.0.0.1/8080", f"{address.hostname}/{address.port}")
    assert subprocess.run(["bash", "-c", script], timeout=30, check=False).returncode == 0
    wrong = script.replace("/apis/ccompat/v7/subjects", "/no/such/path")
    assert subprocess.run(["bash", "-c", wrong], timeout=30, check=False).returncode != 0


def _local_port(address: str) -> int:
    """The port of a ``host:port`` or URL address on this machine; skips the test otherwise."""
    parsed = urlsplit(address if "//" in address else f"//{address}")
    if parsed.hostname not in ("localhost", "127.0.0.1") or parsed.port is None:
        pytest.skip(f"{address} is not on this machine's loopback")
    return parsed.port


def test_a_stack_finds_the_running_registry_and_reuses_it(stack: StackInfo, tmp_path: Path) -> None:
    again = LocalStack(
        tmp_path,
        kafka_port=_local_port(stack.kafka_bootstrap),
        temporal_port=_local_port(stack.temporal_address),
        registry_port=_local_port(stack.schema_registry_url),
    )
    asyncio.run(again.start(timeout=60))
    assert again.reused == ["kafka", "temporal", "registry"]
    assert again.services() == []
    assert again.schema_registry_url == stack.schema_registry_url


def test_another_server_on_the_registry_port_is_named_at_once(
    stack: StackInfo, tmp_path: Path
) -> None:
    # An HTTP server with no GET at all: every request is answered 501.
    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=squatter.serve_forever, daemon=True)
    thread.start()
    try:
        on_it = LocalStack(
            tmp_path,
            kafka_port=_local_port(stack.kafka_bootstrap),
            temporal_port=_local_port(stack.temporal_address),
            registry_port=squatter.server_address[1],
        )
        with pytest.raises(StackError, match=r"HTTP 501: .* not a Confluent-compatible"):
            asyncio.run(on_it.start(timeout=60))
        assert on_it.services() == []
    finally:
        squatter.shutdown()
        squatter.server_close()
