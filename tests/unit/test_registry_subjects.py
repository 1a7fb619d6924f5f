"""Writing in Schema Registry framing: subjects, formats per topic, the registry's answers
sorted into retried and not, against confluent-kafka's in-memory mock registry."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import jsonschema
import pytest
from aiokafka.structs import RecordMetadata
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._async.mock_schema_registry_client import (
    AsyncMockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bridge.codec import SchemaCatalog
from bridge.decoding import Decoder
from bridge.errors import (
    ConfigError,
    SchemaMismatchError,
    SchemaRejectedError,
    SubjectNotRegisteredError,
    TransientError,
)
from bridge.registry import SchemaRegistry
from bridge.registry.subjects import (
    RegistryWriter,
    check,
    check_registered,
    incompatibility,
    json_schema_of,
    register,
    registry_failure,
    registry_schema,
    subject_for,
    subject_plan,
)
from bridge.routes import PublishSpec, RoutesConfig, SubjectStrategy, check_routes
from bridge.sdk.egress import Publisher, PublishRequest
from bridge.settings import REPO_ROOT, Settings
from bridge.wiring import publishing_formats
from tests.support.memory import MemoryRecord

FAILED = "com.example.order.failed"
PLACED = "com.example.order.placed"
DATA = {"order_id": "o-1", "customer_id": "c-1", "step": "charge_payment", "reason": "declined"}
AVRO_TOPIC = PublishSpec(format="confluent-avro", subject_strategy="topic_record")


@pytest.fixture
def catalog() -> SchemaCatalog:
    return SchemaCatalog.from_dir(REPO_ROOT / "schemas")


class FailingRegistry(AsyncMockSchemaRegistryClient):
    """The mock registry; its next lookups and registrations raise ``failures``."""

    def __init__(self) -> None:
        super().__init__({"url": "mock://"})
        self.failures: list[Exception] = []

    def _fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    async def lookup_schema(self, *args: Any, **kw: Any) -> Any:
        self._fail()
        return await super().lookup_schema(*args, **kw)

    async def register_schema_full_response(self, *args: Any, **kw: Any) -> Any:
        self._fail()
        return await super().register_schema_full_response(*args, **kw)


class Producer:
    """Records what is sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **record: Any) -> RecordMetadata:
        self.sent.append({"topic": topic, **record})
        return RecordMetadata(topic, 0, None, len(self.sent) - 1, 0, None, 0)


def test_subjects_are_named_as_confluents_strategies_name_them():
    assert subject_for(SubjectStrategy.TOPIC, "orders.outcomes", FAILED) == "orders.outcomes-value"
    assert subject_for(SubjectStrategy.RECORD, "orders.outcomes", FAILED) == FAILED
    assert subject_for(SubjectStrategy.TOPIC_RECORD, "t", FAILED) == f"t-{FAILED}"


def test_publish_section_is_validated_at_load():
    config = RoutesConfig.parse(
        {"routes": [], "publish": {"out": {"format": "confluent-avro", "auto_register": True}}}
    )
    assert config.publish["out"].registry
    assert config.publish["out"].subject_strategy is SubjectStrategy.TOPIC
    assert not config.publish["out"].model_copy(update={"format": "avro"}).registry
    with pytest.raises(ConfigError, match=r"publish\.out\.format"):
        RoutesConfig.parse({"routes": [], "publish": {"out": {"format": "protobuf"}}})
    with pytest.raises(ConfigError, match="apply to confluent-avro and confluent-json only"):
        RoutesConfig.parse(
            {"routes": [], "publish": {"out": {"format": "avro", "subject_strategy": "record"}}}
        )
    with pytest.raises(ConfigError, match=r"publish\.out\.subject_strategy"):
        RoutesConfig.parse(
            {
                "routes": [],
                "publish": {"out": {"format": "confluent-avro", "subject_strategy": "x"}},
            }
        )


def test_routes_check_names_a_published_type_without_a_schema(catalog):
    config = RoutesConfig.parse(
        {"routes": [], "publish": {"out": {"format": "confluent-avro", "types": ["no.such"]}}}
    )
    [problem] = check_routes(config, catalog)
    assert problem.field == "publish.out.types"
    assert "no.such" in problem.message


def test_json_schema_of_an_avro_record_accepts_and_refuses_what_avro_does(catalog):
    schema = json_schema_of(catalog.get("com.example.order.completed"))
    assert schema["title"] == "com.example.order.completed"
    data = {
        "order_id": "o-1", "customer_id": "c-1", "total_cents": 990, "currency": "EUR",
        "reservation_id": "r-1", "payment_id": "p-1", "shipment_id": None,
    }  # fmt: skip
    catalog.check(catalog.get("com.example.order.completed"), data)
    jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "total_cents": "990"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in data.items() if k != "currency"}, schema)


async def test_confluent_avro_is_registered_on_first_use_and_reads_back(catalog):
    client = AsyncMockSchemaRegistryClient({"url": "mock://"})
    writer = RegistryWriter(client, catalog)
    spec = AVRO_TOPIC.model_copy(update={"auto_register": True})
    framed = await writer.encode("out", spec, FAILED, DATA)
    assert framed.subject == f"out-{FAILED}"
    assert framed.body[0] == 0
    latest = await client.get_latest_version(f"out-{FAILED}")
    assert latest.schema_id == framed.schema_id
    assert framed.body[1:5] == framed.schema_id.to_bytes(4, "big")
    parsed = fastavro.parse_schema(json.loads(latest.schema.schema_str))
    assert fastavro.schemaless_reader(io.BytesIO(framed.body[5:]), parsed, None) == DATA
    again = await writer.encode("out", spec, FAILED, {**DATA, "order_id": "o-2"})
    assert again.schema_id == framed.schema_id


async def test_confluent_json_frames_json_under_the_record_name(catalog):
    client = AsyncMockSchemaRegistryClient({"url": "mock://"})
    writer = RegistryWriter(client, catalog)
    spec = PublishSpec(format="confluent-json", subject_strategy="record", auto_register=True)
    framed = await writer.encode("out", spec, FAILED, DATA)
    assert framed.subject == FAILED
    assert framed.content_type == "application/json"
    assert json.loads(framed.body[5:]) == DATA
    registered = await client.get_latest_version(FAILED)
    assert registered.schema.schema_type == "JSON"


async def test_without_auto_register_a_missing_subject_is_permanent_and_named(catalog):
    writer = RegistryWriter(AsyncMockSchemaRegistryClient({"url": "mock://"}), catalog)
    with pytest.raises(SubjectNotRegisteredError) as raised:
        await writer.encode("out", AVRO_TOPIC, FAILED, DATA)
    assert raised.value.subject == f"out-{FAILED}"
    assert f"out-{FAILED}" in raised.value.message
    assert not raised.value.transient


async def test_without_auto_register_a_registered_schema_is_found(catalog):
    client = AsyncMockSchemaRegistryClient({"url": "mock://"})
    schema_id = await client.register_schema(
        f"out-{FAILED}", registry_schema(catalog.get(FAILED), "AVRO")
    )
    framed = await RegistryWriter(client, catalog).encode("out", AVRO_TOPIC, FAILED, DATA)
    assert framed.schema_id == schema_id


async def test_data_that_does_not_fit_names_the_field_before_any_request(catalog):
    client = FailingRegistry()
    client.failures = [AssertionError("no request expected")]
    writer = RegistryWriter(client, catalog)
    with pytest.raises(SchemaMismatchError) as raised:
        await writer.encode("out", AVRO_TOPIC, FAILED, {**DATA, "step": 7})
    assert raised.value.field == "step"


@pytest.mark.parametrize(
    ("status", "code", "auto_register", "expected"),
    [
        (503, 50301, False, TransientError),
        (500, 50001, True, TransientError),
        (401, 40101, False, TransientError),
        (429, 42901, False, TransientError),
        (404, 40401, False, SubjectNotRegisteredError),
        (404, 40403, False, SubjectNotRegisteredError),
        (409, 409, True, SchemaRejectedError),
        (422, 42201, True, SchemaRejectedError),
    ],
)
def test_registry_answers_are_sorted_by_what_a_retry_can_do(status, code, auto_register, expected):
    error = registry_failure("s", FAILED, auto_register, SchemaRegistryError(status, code, "x"))
    assert type(error) is expected
    assert "'s'" in error.message


def test_subject_plan_covers_registry_topics_types(catalog):
    config = RoutesConfig.parse(
        {
            "routes": [],
            "publish": {
                "a": {"format": "confluent-avro", "types": [FAILED]},
                "b": {"format": "confluent-json", "subject_strategy": "topic_record"},
                "c": {"format": "confluent-avro"},
                "d": {"format": "avro"},
            },
        }
    )
    plan, notes = subject_plan(config, catalog)
    assert ("a-value", FAILED, "AVRO") in {(p.subject, p.type, p.kind) for p in plan}
    assert {p.subject for p in plan if p.topic == "b"} == {f"b-{n}" for n in catalog.names()}
    assert not [p for p in plan if p.topic in ("c", "d")]
    assert notes == ["publish.c: subject c-value holds one type: list it in `types`"]
    default, _ = subject_plan(RoutesConfig.parse({"routes": []}), catalog)
    assert [p.subject for p in default] == catalog.names()


def test_incompatibility_names_the_field_a_backward_reader_cannot_fill(catalog, tmp_path):
    local = catalog.get(FAILED)
    assert local.source is not None
    registered = local.source.read_text()
    changed = json.loads(registered)
    changed["fields"].append({"name": "attempt", "type": "int"})
    (tmp_path / "failed.avsc").write_text(json.dumps(changed))
    new = SchemaCatalog.from_dir(tmp_path).get(FAILED)
    reason = incompatibility(new, registered, "BACKWARD", "AVRO")
    assert "attempt" in reason
    assert "missing default" in reason
    assert "attempt" not in incompatibility(new, registered, "FORWARD", "AVRO")


def request(topic: str = "out") -> PublishRequest:
    return PublishRequest(
        topic=topic, type=FAILED, data=DATA, name="outcome", key="o-1", causation_id="evt-1"
    )


async def test_publisher_writes_registry_framing_with_cloudevents_headers(catalog):
    client = AsyncMockSchemaRegistryClient({"url": "mock://"})
    producer = Producer()
    spec = AVRO_TOPIC.model_copy(update={"auto_register": True})
    publisher = Publisher(
        producer,  # type: ignore[arg-type]
        catalog,
        "tests",
        publishing={"out": spec},
        registry=RegistryWriter(client, catalog),
    )
    published = await ActivityEnvironment().run(publisher.publish, request())
    [sent] = producer.sent
    assert sent["value"][0] == 0
    headers = dict(sent["headers"])
    assert headers["ce_id"] == published.ce_id.encode()
    assert headers["ce_type"] == FAILED.encode()
    assert headers["ce_causationid"] == b"evt-1"
    assert headers["content-type"] == b"application/avro"
    # ktb's own decoder reads it back: the envelope from the headers, the data by schema id.
    decoder = Decoder(catalog, registry=SchemaRegistry(client))
    event = await decoder.decode(
        MemoryRecord("out", 0, 0, sent["key"], sent["value"], sent["headers"], 1)
    )
    assert (event.id, event.type, dict(event.data)) == (published.ce_id, FAILED, DATA)
    assert event.causation_id == "evt-1"


async def test_publisher_topics_without_a_registry_format_are_unchanged(catalog):
    producer = Producer()
    publisher = Publisher(
        producer, catalog, "tests", publishing={"out": PublishSpec(format="json")}
    )  # type: ignore[arg-type]
    await ActivityEnvironment().run(publisher.publish, request())
    await ActivityEnvironment().run(publisher.publish, request("other"))
    first, second = producer.sent
    assert json.loads(first["value"]) == DATA
    assert dict(first["headers"])["content-type"] == b"application/json"
    assert second["value"][:2] == b"\xc3\x01"


async def test_publisher_missing_subject_fails_at_once_naming_it(catalog):
    producer = Producer()
    publisher = Publisher(
        producer,  # type: ignore[arg-type]
        catalog,
        "tests",
        publishing={"out": AVRO_TOPIC},
        registry=RegistryWriter(AsyncMockSchemaRegistryClient({"url": "mock://"}), catalog),
    )
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(publisher.publish, request())
    assert raised.value.non_retryable
    assert raised.value.type == "SubjectNotRegisteredError"
    assert raised.value.details == ({"topic": "out", "subject": f"out-{FAILED}"},)
    assert not producer.sent


async def test_publisher_registry_not_answering_is_retried_then_publishes(catalog):
    client = FailingRegistry()
    client.failures = [SchemaRegistryError(503, 50301, "unavailable")]
    producer = Producer()
    publisher = Publisher(
        producer,  # type: ignore[arg-type]
        catalog,
        "tests",
        publishing={"out": AVRO_TOPIC.model_copy(update={"auto_register": True})},
        registry=RegistryWriter(client, catalog),
    )
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as raised:
        await env.run(publisher.publish, request())
    assert not raised.value.non_retryable
    assert not producer.sent
    published = await env.run(publisher.publish, request())
    assert dict(producer.sent[0]["headers"])["ce_id"] == published.ce_id.encode()


async def test_publisher_without_a_registry_for_a_registry_topic_fails_for_good(catalog):
    publisher = Publisher(Producer(), catalog, "tests", publishing={"out": AVRO_TOPIC})  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(publisher.publish, request())
    assert raised.value.non_retryable
    assert "KTB_SCHEMA_REGISTRY_URL" in raised.value.message


def test_a_worker_refuses_registry_topics_without_a_registry(tmp_path: Path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes: []\npublish:\n  out: {format: confluent-avro}\n  plain: {format: json}\n"
    )
    with pytest.raises(ConfigError, match="out written in Schema Registry framing"):
        publishing_formats(Settings(routes_file=routes))
    found = publishing_formats(Settings(routes_file=routes, schema_registry_url="http://r:1"))
    assert set(found) == {"out", "plain"}
    assert publishing_formats(Settings(routes_file=tmp_path / "none.yaml")) == {}


class LevelledRegistry(AsyncMockSchemaRegistryClient):
    """The mock registry with compatibility levels and a verdict; records the tests asked."""

    def __init__(self, verdict: bool) -> None:
        super().__init__({"url": "mock://"})
        self.verdict = verdict
        self.levels: dict[str | None, str] = {}
        self.asked: list[str] = []

    async def get_compatibility(self, subject_name: str | None = None) -> str:
        if subject_name not in self.levels:
            raise SchemaRegistryError(404, 40408, "no level")
        return self.levels[subject_name]

    async def set_compatibility(
        self, subject_name: str | None = None, level: str | None = None
    ) -> str:
        assert level is not None
        self.levels[subject_name] = level
        return level

    async def test_compatibility(self, subject_name: str, schema: Any, *a: Any, **kw: Any) -> bool:
        self.asked.append("latest")
        return self.verdict

    async def test_compatibility_all_versions(
        self, subject_name: str, schema: Any, *a: Any, **kw: Any
    ) -> bool:
        self.asked.append("all")
        return self.verdict


def plan_for(catalog: SchemaCatalog) -> list[Any]:
    config = RoutesConfig.parse(
        {"routes": [], "publish": {"out": {"format": "confluent-avro", "types": [FAILED]}}}
    )
    return subject_plan(config, catalog)[0]


async def test_register_sets_backward_where_the_subject_has_no_level_and_check_uses_it(catalog):
    client = LevelledRegistry(verdict=True)
    [before] = await check(client, catalog, plan_for(catalog))
    assert before.version is None and before.compatible and not client.asked
    [done] = await register(client, catalog, plan_for(catalog))
    assert (done.subject, done.version) == ("out-value", 1)
    assert client.levels["out-value"] == "BACKWARD"
    [after] = await check(client, catalog, plan_for(catalog))
    assert (after.level, after.version, after.compatible) == ("BACKWARD", 1, True)
    assert client.asked == ["latest"]


async def test_check_tests_every_version_under_a_transitive_level_and_names_the_reason(
    catalog, tmp_path
):
    client = LevelledRegistry(verdict=False)
    client.levels["out-value"] = "FULL_TRANSITIVE"
    await register(client, catalog, plan_for(catalog))
    assert client.levels["out-value"] == "FULL_TRANSITIVE"  # a level of its own is kept
    changed = json.loads((REPO_ROOT / "schemas" / "order" / "failed.avsc").read_text())
    changed["fields"].append({"name": "attempt", "type": "int"})
    (tmp_path / "failed.avsc").write_text(json.dumps(changed))
    newer = SchemaCatalog.from_dir(tmp_path)
    [result] = await check(client, newer, plan_for(newer))
    assert client.asked == ["all"]
    assert not result.compatible
    assert "out-value version 1 (FULL_TRANSITIVE)" in str(result)
    assert "attempt" in result.reason


async def test_an_unset_subject_level_falls_back_to_the_registrys_then_backward(catalog):
    client = LevelledRegistry(verdict=True)
    await client.register_schema("out-value", registry_schema(catalog.get(FAILED), "AVRO"))
    [result] = await check(client, catalog, plan_for(catalog))
    assert result.level == "BACKWARD"
    client.levels[None] = "FORWARD"
    [result] = await check(client, catalog, plan_for(catalog))
    assert result.level == "FORWARD"


def start_route(topic: str, type_name: str) -> dict[str, Any]:
    return {
        "name": f"start-{type_name.rsplit('.', 1)[-1]}",
        "topic": topic,
        "type": type_name,
        "action": "start",
        "workflow": "W",
        "task_queue": "q",
        "workflow_id": "w-{data.order_id}",
    }


async def test_routes_check_against_the_registry(catalog):
    client = AsyncMockSchemaRegistryClient({"url": "mock://"})
    foreign = {"type": "record", "name": "Shipped", "namespace": "com.other",
               "fields": [{"name": "order_id", "type": "string"}]}  # fmt: skip
    config = RoutesConfig.parse(
        {
            "routes": [
                start_route("orders", PLACED),
                start_route("shipments", "com.other.Shipped"),
                start_route("returns", "com.other.Returned"),
            ],
            "publish": {"out": {"format": "confluent-avro", "types": [FAILED]}},
        }
    )
    # order.placed registered with order_id an int: the local schema cannot read it; a
    # type with no local schema needs its reader subject; out-value lacks order.failed.
    placed = json.loads((REPO_ROOT / "schemas" / "order" / "placed.avsc").read_text())
    placed["fields"][0]["type"] = "int"
    await client.register_schema("orders-value", Schema(json.dumps(placed), "AVRO"))
    await client.register_schema("shipments-value", Schema(json.dumps(foreign), "AVRO"))
    problems = {
        (p.route, p.field): p.message for p in await check_registered(config, catalog, client)
    }
    assert set(problems) == {
        ("start-placed", "type"),
        ("start-Returned", "type"),
        ("(publish)", "publish.out"),
    }
    assert "order_id" in problems[("start-placed", "type")]
    assert "'returns-value'" in problems[("start-Returned", "type")]
    assert (
        "'out-value' does not hold com.example.order.failed"
        in problems[("(publish)", "publish.out")]
    )
    await client.register_schema("out-value", registry_schema(catalog.get(FAILED), "AVRO"))
    placed["fields"][0]["type"] = "string"
    await client.register_schema("orders-value", Schema(json.dumps(placed), "AVRO"))
    problems = {(p.route, p.field) for p in await check_registered(config, catalog, client)}
    assert problems == {("start-Returned", "type")}
