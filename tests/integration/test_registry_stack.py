"""The session's Schema Registry is a real Apicurio Registry speaking the Confluent API."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from urllib.parse import urlsplit

import yaml
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

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
