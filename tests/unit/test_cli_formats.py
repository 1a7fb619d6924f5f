"""``ktb produce --format``, ``ktb schemas`` and ``ktb tail``'s rendering: bad input is
refused with exit code 2 before anything is sent; records render as the bridge reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.cli.main import _publish_spec, app
from bridge.codec import SchemaCatalog
from bridge.decoding import render
from bridge.errors import ConfigError
from bridge.routes import PublishSpec, SubjectStrategy
from bridge.settings import REPO_ROOT
from tests.support.memory import MemoryRecord

DATA = json.dumps({"order_id": "o-1", "step": "charge_payment", "reason": "declined"})
FAILED = "com.example.order.failed"
# Nothing listens here: a command that got as far as Kafka or the registry would fail with 1.
ENV: dict[str, str | None] = {
    "KTB_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "KTB_SCHEMA_REGISTRY_URL": None,  # unset
    "KTB_ROUTES_FILE": str(REPO_ROOT / "routes.yaml"),
}


def produce(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["produce", "out", "--type", FAILED, "--data", DATA, *args], env=ENV
    )
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--format", "protobuf"], "--format must be one of"),
        (["--json", "--format", "confluent-avro"], "disagree"),
        (["--format", "avro", "--subject-strategy", "record"], "apply to confluent-avro"),
        (["--format", "confluent-avro", "--subject-strategy", "name"], "subject-strategy"),
        (["--format", "confluent-avro"], "needs KTB_SCHEMA_REGISTRY_URL"),
    ],
)
def test_produce_refuses_bad_options_with_exit_2(args, says):
    code, output = produce(*args)
    assert code == 2, output
    assert says in output


def test_produce_refuses_data_that_is_no_object():
    result = CliRunner().invoke(app, ["produce", "out", "--type", FAILED, "--data", "[1]"], env=ENV)
    assert result.exit_code == 2
    assert "must be a JSON object" in result.output


def test_options_override_the_topics_publish_settings():
    configured = PublishSpec(
        format="confluent-avro", subject_strategy="record", auto_register=False
    )
    spec = _publish_spec(configured, None, None, True)
    assert (spec.format, spec.subject_strategy, spec.auto_register) == (
        "confluent-avro",
        SubjectStrategy.RECORD,
        True,
    )
    assert _publish_spec(configured, "json", None, None).format == "json"
    assert _publish_spec(None, None, None, None).format == "avro"
    with pytest.raises(ConfigError):
        _publish_spec(None, "json", None, True)


def test_schemas_commands_need_a_registry():
    for command in ("register", "check"):
        result = CliRunner().invoke(app, ["schemas", command], env=ENV)
        assert result.exit_code == 2
        assert "KTB_SCHEMA_REGISTRY_URL" in result.output


def test_schemas_register_refuses_an_unknown_level():
    env = {**ENV, "KTB_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"}
    result = CliRunner().invoke(app, ["schemas", "register", "--compatibility", "LOOSE"], env=env)
    assert result.exit_code == 2
    assert "--compatibility must be one of" in result.output


def test_schemas_commands_name_an_unknown_published_type(tmp_path: Path):
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes: []\npublish:\n  out: {format: confluent-avro, types: [no.such]}\n")
    env = {**ENV, "KTB_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"}
    result = CliRunner().invoke(app, ["schemas", "check", "--routes", str(routes)], env=env)
    assert result.exit_code == 2
    assert "no.such" in result.output


def test_schemas_check_with_the_registry_down_exits_1():
    env = {**ENV, "KTB_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"}
    result = CliRunner().invoke(app, ["schemas", "check"], env=env)
    assert result.exit_code == 1
    assert "Schema Registry unavailable" in result.output


def test_tail_renders_a_record_without_cloudevents_headers_with_its_envelope():
    catalog = SchemaCatalog.from_dir(REPO_ROOT / "schemas")
    value = catalog.encode(FAILED, json.loads(DATA))
    out = render(catalog, MemoryRecord("orders", 2, 9, b"o-1", value, [], 1))
    assert out["data"] == {**json.loads(DATA), "customer_id": None}  # the schema's default
    assert out["event"] == {"id": "orders-2-9", "type": FAILED, "source": "kafka:orders"}
    bad = render(catalog, MemoryRecord("orders", 0, 1, None, b"\x07junk", [], 1))
    assert "no format ktb reads" in bad["error"]
