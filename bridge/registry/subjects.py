"""Writing in Schema Registry framing, and the subjects ``schemas/`` lives under.

confluent-kafka's serializers do the registry's work: they register a schema on
first use (``auto_register``) or look up the version the subject holds, and keep
the schema id per subject, so a topic's records cost one request on first use and
none after. This module picks a serializer per topic, type and format, names
subjects with Confluent's strategies (``subject_for``), and sorts the registry's
answers as the reading side does: a subject without the schema, a schema the
registry refuses (``SubjectNotRegisteredError``, ``SchemaRejectedError``) never
succeed on a retry; no answer, a timeout, a 5xx, refused credentials are
``TransientError``. ``ktb schemas`` registers and checks the same subjects
(``subject_plan``, ``register``, ``check``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka.schema_registry import (
    AsyncSchemaRegistryClient,
    Schema,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry._async.avro import AsyncAvroSerializer
from confluent_kafka.schema_registry._async.json_schema import AsyncJSONSerializer
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from bridge.codec import AVRO, AVRO_KIND, JSON, JSON_KIND, EventSchema, Resolver, SchemaCatalog
from bridge.decoding import Decoder
from bridge.errors import (
    BridgeError,
    ConfigError,
    SchemaIncompatibleError,
    SchemaRejectedError,
    SubjectNotRegisteredError,
    TransientError,
)
from bridge.registry.client import NOT_A_REGISTRY_ANSWER, NOT_FOUND, registry_config
from bridge.routes import PublishSpec, RouteProblem, RoutesConfig, SubjectStrategy
from bridge.settings import Settings

T = TypeVar("T")

STRATEGIES: dict[SubjectStrategy, Callable[[SerializationContext, str | None], str | None]] = {
    SubjectStrategy.TOPIC: topic_subject_name_strategy,
    SubjectStrategy.RECORD: record_subject_name_strategy,
    SubjectStrategy.TOPIC_RECORD: topic_record_subject_name_strategy,
}
"""Confluent's own strategy functions: ktb names subjects exactly as their serializers do."""
RETRIED_STATUS = frozenset({401, 403, 408, 429})
"""Answers a retry may cure (credentials being fixed, a timeout, rate limits); 5xx too."""
DEFAULT_COMPATIBILITY = "BACKWARD"
SUBJECT_NOT_FOUND = 40401


def client_from_settings(settings: Settings) -> AsyncSchemaRegistryClient:
    """confluent-kafka's registry client for ``settings``; ``ConfigError`` without a URL."""
    conf = registry_config(settings)
    if conf is None:
        raise ConfigError("no Schema Registry is configured (KTB_SCHEMA_REGISTRY_URL)")
    try:
        return AsyncSchemaRegistryClient(conf)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"Schema Registry client: {type(exc).__name__}: {exc}") from exc


def subject_for(strategy: SubjectStrategy, topic: str, type_name: str) -> str:
    """The value subject of ``type_name`` records on ``topic`` under ``strategy``."""
    subject = STRATEGIES[strategy](SerializationContext(topic, MessageField.VALUE), type_name)
    assert subject is not None  # every strategy names a subject when the type is known
    return subject


def json_schema_of(schema: EventSchema) -> dict[str, Any]:
    """A JSON Schema accepting what ``schema``'s Avro record accepts as JSON; its
    ``title`` is the record's full name (the record-name strategy's subject)."""
    out = _json_type(schema.parsed)
    out["$schema"] = "http://json-schema.org/draft-07/schema#"
    out["title"] = schema.name
    return out


def _json_type(avro: Any) -> dict[str, Any]:
    if isinstance(avro, list):
        return {"oneOf": [_json_type(branch) for branch in avro]}
    if isinstance(avro, str):
        return dict(_PRIMITIVES.get(avro, {}))
    kind = avro.get("type")
    if kind == "record":
        fields = avro["fields"]
        return {
            "type": "object",
            "properties": {f["name"]: _json_type(f["type"]) for f in fields},
            "required": [f["name"] for f in fields if "default" not in f],
        }
    if kind == "array":
        return {"type": "array", "items": _json_type(avro["items"])}
    if kind == "map":
        return {"type": "object", "additionalProperties": _json_type(avro["values"])}
    if kind == "enum":
        return {"type": "string", "enum": list(avro["symbols"])}
    if kind == "fixed":
        return {"type": "string"}
    if isinstance(kind, str | list | dict):
        return _json_type(kind)
    return {}


_PRIMITIVES: dict[str, dict[str, Any]] = {
    "null": {"type": "null"},
    "boolean": {"type": "boolean"},
    "int": {"type": "integer"},
    "long": {"type": "integer"},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "bytes": {"type": "string"},
    "string": {"type": "string"},
}


def registry_schema(schema: EventSchema, kind: str) -> Schema:
    """``schema`` as the registry holds it: the ``.avsc`` text (``AVRO``), or its JSON
    Schema (``JSON``)."""
    if kind == JSON_KIND:
        return Schema(json.dumps(json_schema_of(schema), sort_keys=True), JSON_KIND)
    assert schema.source is not None
    return Schema(json.dumps(json.loads(schema.source.read_text())), AVRO_KIND)


@dataclass(frozen=True)
class Framed:
    """A value in Schema Registry framing and where its schema is registered."""

    body: bytes
    schema_id: int
    subject: str
    content_type: str


class RegistryWriter:
    """Encodes published data in Schema Registry framing, one serializer per topic,
    type and format, each built once and kept (their schema ids with them)."""

    def __init__(self, client: AsyncSchemaRegistryClient, catalog: SchemaCatalog) -> None:
        self.client = client
        self.catalog = catalog
        self._serializers: dict[tuple[str, ...], Any] = {}

    @classmethod
    def from_settings(cls, settings: Settings, catalog: SchemaCatalog) -> RegistryWriter:
        """The writer for the registry of ``settings``."""
        return cls(client_from_settings(settings), catalog)

    async def aclose(self) -> None:
        """Close the client's HTTP connections."""
        await self.client.aclose()

    async def encode(
        self, topic: str, spec: PublishSpec, type_name: str, data: Mapping[str, Any]
    ) -> Framed:
        """``data`` of ``type_name`` framed for ``topic``: checked against the local
        schema first (``SchemaMismatchError`` names the field), then serialized."""
        schema = self.catalog.get(type_name)
        self.catalog.check(schema, data)
        subject = subject_for(spec.subject_strategy, topic, type_name)
        kind = JSON_KIND if spec.format == "confluent-json" else AVRO_KIND
        serializer = await self._serializer(topic, type_name, spec, schema, kind)
        ctx = SerializationContext(topic, MessageField.VALUE)
        try:
            body = await serializer(dict(data), ctx)
        except SchemaRegistryError as exc:
            raise registry_failure(subject, type_name, spec.auto_register, exc) from exc
        except httpx.HTTPError as exc:
            raise TransientError(
                f"Schema Registry unavailable for subject {subject!r}: {type(exc).__name__}: {exc}"
            ) from exc
        except (SerializationError, *NOT_A_REGISTRY_ANSWER) as exc:
            # The data passed the local check: what refuses it is an answer that is no
            # registry's (the URL points at another server), transient like no answer.
            raise TransientError(
                f"Schema Registry: cannot frame {type_name} for subject {subject!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        assert body is not None
        schema_id = int.from_bytes(body[1:5], "big")
        return Framed(body, schema_id, subject, JSON if kind == JSON_KIND else AVRO)

    async def _serializer(
        self, topic: str, type_name: str, spec: PublishSpec, schema: EventSchema, kind: str
    ) -> Any:
        key = (topic, type_name, kind, spec.subject_strategy.value, str(spec.auto_register))
        found = self._serializers.get(key)
        if found is None:
            # Building parses the schema and asks the registry nothing; the serializer
            # registers or looks up its subject once, on its first record.
            found = await self._build(spec, schema, kind)
            self._serializers[key] = found
        return found

    async def _build(self, spec: PublishSpec, schema: EventSchema, kind: str) -> Any:
        conf = {
            "auto.register.schemas": spec.auto_register,
            "subject.name.strategy": STRATEGIES[spec.subject_strategy],
        }
        registered = registry_schema(schema, kind)
        if kind == JSON_KIND:
            return await AsyncJSONSerializer(registered, self.client, conf=conf)
        return await AsyncAvroSerializer(self.client, registered, conf=conf)


def registry_failure(
    subject: str, type_name: str, auto_register: bool, exc: SchemaRegistryError
) -> BridgeError:
    """A registry answer while publishing, sorted: permanent unless a retry may cure it."""
    status = exc.http_status_code
    detail = f"HTTP {status}: {exc.error_message} (error code {exc.error_code})"
    if status >= 500 or status in RETRIED_STATUS or status < 0:
        return TransientError(f"Schema Registry unavailable for subject {subject!r}: {detail}")
    if status == NOT_FOUND and not auto_register:
        what = "no such subject" if exc.error_code == SUBJECT_NOT_FOUND else "not this schema"
        return SubjectNotRegisteredError(
            f"subject {subject!r} does not hold the schema of {type_name} ({what}; "
            f"auto_register is false: register it first, e.g. `ktb schemas register`): {detail}",
            subject=subject,
        )
    return SchemaRejectedError(
        f"the Schema Registry refused {type_name} under subject {subject!r}: {detail}",
        subject=subject,
        status=status,
    )


# --- ktb schemas register / check -------------------------------------------------------


@dataclass(frozen=True)
class PlannedSubject:
    """One local schema under one subject, as the routes file's ``publish:`` names it."""

    subject: str
    type: str
    kind: str
    """``AVRO`` or ``JSON`` (the registry's schema type)."""
    topic: str | None


def subject_plan(
    config: RoutesConfig | None, catalog: SchemaCatalog
) -> tuple[list[PlannedSubject], list[str]]:
    """The subjects ``ktb schemas`` covers, and notes on topics it leaves out.

    Every ``publish:`` topic in a registry format, for the ``types`` it lists (under
    the record-name strategies, every local schema when it lists none). A routes file
    with no such topic: every local schema under its record name (what a
    ``record_subject_name_strategy`` producer registers).
    """
    planned: list[PlannedSubject] = []
    notes: list[str] = []
    topics = {t: s for t, s in (config.publish if config else {}).items() if s.registry}
    if not topics:
        for name in catalog.names():
            planned.append(PlannedSubject(name, name, AVRO_KIND, None))
        return planned, notes
    for topic, spec in sorted(topics.items()):
        kind = JSON_KIND if spec.format == "confluent-json" else AVRO_KIND
        types = list(spec.types)
        if not types and spec.subject_strategy is SubjectStrategy.TOPIC:
            notes.append(
                f"publish.{topic}: subject {topic}-value holds one type: list it in `types`"
            )
            continue
        for type_name in types or catalog.names():
            if type_name not in catalog:
                raise ConfigError(f"publish.{topic}.types: no local schema for {type_name!r}")
            subject = subject_for(spec.subject_strategy, topic, type_name)
            planned.append(PlannedSubject(subject, type_name, kind, topic))
    unique = {(p.subject, p.type, p.kind): p for p in planned}
    return list(unique.values()), notes


@dataclass(frozen=True)
class Registered:
    """A schema registered (or found already registered) under a subject."""

    subject: str
    type: str
    version: int
    schema_id: int


@dataclass(frozen=True)
class Compatibility:
    """A local schema tested against its subject at the subject's compatibility level."""

    subject: str
    type: str
    level: str
    version: int | None
    """The subject's latest version (``None``: the subject does not exist yet)."""
    compatible: bool
    reason: str = ""

    def __str__(self) -> str:
        if self.version is None:
            return f"{self.subject}: not registered yet ({self.type}); nothing to break"
        verdict = "compatible" if self.compatible else "INCOMPATIBLE"
        line = f"{self.subject} version {self.version} ({self.level}): {self.type} {verdict}"
        return f"{line}: {self.reason}" if self.reason else line


async def register(
    client: AsyncSchemaRegistryClient,
    catalog: SchemaCatalog,
    plan: Iterable[PlannedSubject],
    level: str = DEFAULT_COMPATIBILITY,
) -> list[Registered]:
    """Register each planned schema under its subject (an identical one is found, not
    registered twice); ``SchemaRejectedError`` names a subject that refuses it.

    A subject without a compatibility level of its own gets ``level`` first: a
    registry's global default may be NONE (Apicurio's is), which checks nothing.
    """
    out = []
    for item in plan:
        schema = registry_schema(catalog.get(item.type), item.kind)
        if await _own_level(client, item.subject) is None:
            await _ask(item.subject, client.set_compatibility(item.subject, level))
        registered = await _ask(
            item.subject, client.register_schema_full_response(item.subject, schema)
        )
        found = await _ask(item.subject, client.lookup_schema(item.subject, schema))
        out.append(
            Registered(item.subject, item.type, found.version or 0, registered.schema_id or 0)
        )
    return out


async def check(
    client: AsyncSchemaRegistryClient, catalog: SchemaCatalog, plan: Iterable[PlannedSubject]
) -> list[Compatibility]:
    """Test each planned schema with the registry's compatibility endpoint at its
    subject's level (the registry's default, BACKWARD unless configured otherwise)."""
    out = []
    for item in plan:
        local = catalog.get(item.type)
        schema = registry_schema(local, item.kind)
        try:
            latest = await client.get_latest_version(item.subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                out.append(Compatibility(item.subject, item.type, "", None, True))
                continue
            raise _unavailable(item.subject, exc) from exc
        except (httpx.HTTPError, *NOT_A_REGISTRY_ANSWER) as exc:
            raise _unavailable(item.subject, exc) from exc
        level = await _level(client, item.subject)
        # A transitive level is tested against every version, the others against the latest.
        test = (
            client.test_compatibility_all_versions(item.subject, schema)
            if level.endswith("_TRANSITIVE")
            else client.test_compatibility(item.subject, schema)
        )
        ok = await _ask(item.subject, test)
        reason = ""
        if not ok:
            registered = latest.schema.schema_str if latest.schema is not None else None
            reason = incompatibility(local, registered, level, item.kind)
        out.append(Compatibility(item.subject, item.type, level, latest.version, ok, reason))
    return out


async def _level(client: AsyncSchemaRegistryClient, subject: str) -> str:
    """The level the registry applies to ``subject``: its own, else the registry's
    global one, else BACKWARD (the Confluent default)."""
    return (
        await _own_level(client, subject)
        or await _own_level(client, None, subject)
        or DEFAULT_COMPATIBILITY
    )


async def _own_level(
    client: AsyncSchemaRegistryClient, name: str | None, subject: str | None = None
) -> str | None:
    """The compatibility level configured for ``name`` (``None``: the registry's global
    level); ``None`` when none is."""
    try:
        level = await client.get_compatibility(name)
    except SchemaRegistryError as exc:
        if exc.http_status_code == NOT_FOUND:
            return None
        raise _unavailable(subject or name or "(global)", exc) from exc
    except (httpx.HTTPError, *NOT_A_REGISTRY_ANSWER) as exc:
        raise _unavailable(subject or name or "(global)", exc) from exc
    return str(level) if level else None


def incompatibility(local: EventSchema, registered: str | None, level: str, kind: str) -> str:
    """Why ``local`` breaks the registered schema at ``level``, field by field (Avro's own
    rules); a general reason when the latest version alone does not show it."""
    fallback = f"the registry refuses it under {level}"
    if kind != AVRO_KIND or not registered:
        return fallback
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
    from avro.schema import parse

    assert local.source is not None
    new, old = parse(local.source.read_text()), parse(registered)
    pairs = []
    if level.startswith(("BACKWARD", "FULL")):
        pairs.append(("reading data written with the registered version", new, old))
    if level.startswith(("FORWARD", "FULL")):
        pairs.append(("the registered version reading its data", old, new))
    checker = ReaderWriterCompatibilityChecker()
    for what, reader, writer in pairs:
        result = checker.get_compatibility(reader, writer)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            kinds = ", ".join(sorted({i.value.replace("_", " ") for i in result.incompatibilities}))
            fields = ", ".join(sorted(result.messages))
            return f"{what}: {kinds} (field {fields})"
    return f"{fallback} (against an earlier version)"


async def _ask(subject: str, call: Awaitable[T]) -> T:
    """A registry call for ``subject`` with its failures sorted (``ktb schemas``)."""
    try:
        return await call
    except SchemaRegistryError as exc:
        if exc.http_status_code >= 500 or exc.http_status_code in RETRIED_STATUS:
            raise _unavailable(subject, exc) from exc
        raise SchemaRejectedError(
            f"subject {subject!r}: HTTP {exc.http_status_code}: {exc.error_message} "
            f"(error code {exc.error_code})",
            subject=subject,
            status=exc.http_status_code,
        ) from exc
    except (httpx.HTTPError, *NOT_A_REGISTRY_ANSWER) as exc:
        raise _unavailable(subject, exc) from exc


def _unavailable(subject: str, exc: Exception) -> TransientError:
    if isinstance(exc, SchemaRegistryError):
        detail = f"HTTP {exc.http_status_code}: {exc.error_message}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return TransientError(f"Schema Registry unavailable for subject {subject!r}: {detail}")


# --- ktb routes check, against the registry ------------------------------------------------


async def check_registered(
    config: RoutesConfig,
    catalog: SchemaCatalog,
    client: AsyncSchemaRegistryClient,
) -> list[RouteProblem]:
    """Routes and ``publish:`` topics against what the registry holds.

    A route whose type has no local schema needs its topic's reader subject; a route
    whose type has one and whose reader subject holds that type must be able to read
    it (Avro schema resolution); a ``publish:`` topic without ``auto_register`` needs
    every type it lists registered under its subject.
    """
    from bridge.registry.client import SchemaRegistry

    registry = SchemaRegistry(client)
    decoder = Decoder(catalog, config.envelope)
    resolver = Resolver()
    problems: list[RouteProblem] = []
    for route in config.routes:
        subject = decoder.envelope(route.topic).reader_subject(
            {"topic": route.topic, "type": route.type}
        )
        latest = await registry.latest(subject)
        if route.type not in catalog:
            if latest is None:
                problems.append(
                    RouteProblem(
                        route.name,
                        "type",
                        f"no schema for {route.type!r} in schemas/ nor under subject {subject!r}",
                    )
                )
            continue
        if latest is None or latest.kind != AVRO_KIND or latest.name != route.type:
            continue
        try:
            resolver.reader_for(latest, catalog.get(route.type))
        except SchemaIncompatibleError as exc:
            problems.append(RouteProblem(route.name, "type", f"subject {subject!r}: {exc.message}"))
    plan, _ = subject_plan(config, catalog)
    for item in plan:
        spec = config.publish.get(item.topic or "")
        if spec is None or spec.auto_register:
            continue
        schema = registry_schema(catalog.get(item.type), item.kind)
        try:
            await client.lookup_schema(item.subject, schema)
        except SchemaRegistryError as exc:
            if exc.http_status_code != NOT_FOUND:
                raise _unavailable(item.subject, exc) from exc
            problems.append(
                RouteProblem(
                    "(publish)",
                    f"publish.{item.topic}",
                    f"subject {item.subject!r} does not hold {item.type} and auto_register is "
                    "false (`ktb schemas register`)",
                )
            )
        except (httpx.HTTPError, *NOT_A_REGISTRY_ANSWER) as exc:
            raise _unavailable(item.subject, exc) from exc
    return problems
