"""Egress: the activity that publishes outcome and compensation events to Kafka.

``ce_id`` is derived from the workflow id, run id, activity id and a per-call
name, so a retried activity republishes the same id and consumers dedupe on it.
Kafka failing for a while (no leader, timeouts, a broker down) is retried with
that same id for as long as it takes; an event Kafka will never take (larger
than the producer or topic allows, a topic the client may not write, an invalid
topic: ``bridge.kafka.is_permanent``) fails the activity at once, non-retryably,
naming the topic, the record's size and Kafka's error.

A topic configured in the routes file's ``publish:`` section is written in its
format: ``confluent-avro`` and ``confluent-json`` frame the data for the Schema
Registry (``bridge.registry.subjects``) and keep the CloudEvents headers. The
registry follows the same split: not answering is retried, a subject that does
not hold the schema (``auto_register: false``) or a schema it refuses fails at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bridge import kafka
from bridge.codec import AVRO, JSON, SchemaCatalog
from bridge.envelope import KafkaRecord, encode_event, record_size
from bridge.errors import BridgeError, SchemaMismatchError, TransientError
from bridge.observability.metrics import Metrics
from bridge.observability.tracing import outgoing_traceparent
from bridge.provenance import ProvenanceWriter
from bridge.routes import PublishSpec

if TYPE_CHECKING:
    from bridge.registry.subjects import RegistryWriter

PUBLISH_ACTIVITY = "ktb.publish"
OUTCOME = "outcome"
COMPENSATION = "compensation"
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a0e-8d1b-4c55-9a57-0b4f3e0d2c11")


@dataclass
class PublishRequest:
    """One event a workflow wants on Kafka."""

    topic: str
    type: str
    data: dict[str, Any]
    name: str
    """Tells apart the events of one workflow; part of the ``ce_id`` (a saga uses the step)."""
    key: str | None = None
    kind: str = OUTCOME
    """``outcome`` or ``compensation`` (metrics and provenance)."""
    causation_id: str | None = None
    correlation_id: str | None = None
    tenant_id: str | None = None
    traceparent: str | None = None
    subject: str | None = None
    content_type: str = AVRO
    extensions: dict[str, str] = field(default_factory=dict)


@dataclass
class Published:
    """Where a published event landed."""

    ce_id: str
    type: str
    topic: str
    partition: int
    offset: int


def event_id_for(workflow_id: str, run_id: str, activity_id: str, name: str) -> str:
    """The deterministic ``ce_id`` of an event published by an activity call."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{workflow_id}/{run_id}/{activity_id}/{name}"))


def rejected(
    req: PublishRequest, ce_id: str, record: KafkaRecord, exc: KafkaError
) -> ApplicationError:
    """The non-retryable failure for an event Kafka will never take (``kafka.is_permanent``).

    Names the event, the topic and Kafka's error; for a record over the size
    limit (the producer's ``max_request_size`` or the topic's ``max.message.bytes``)
    also its size, so the workflow's failure says what to change.
    """
    size = record_size(record)
    what = f"{req.type} event {ce_id} to {req.topic}"
    if kafka.is_too_large(exc):
        message = (
            f"cannot publish {what}: the record is {size} bytes, more than Kafka accepts "
            f"({type(exc).__name__}: {exc})"
        )
    else:
        message = f"cannot publish {what}: {type(exc).__name__}: {exc}"
    details = {
        "topic": req.topic,
        "ce_id": ce_id,
        "size_bytes": size,
        "kafka_error": type(exc).__name__,
    }
    return ApplicationError(message, details, type=type(exc).__name__, non_retryable=True)


class Publisher:
    """Holds one long-lived idempotent producer; its ``publish`` method is the activity."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        catalog: SchemaCatalog,
        source: str = "ktb",
        metrics: Metrics | None = None,
        provenance: ProvenanceWriter | None = None,
        publishing: Mapping[str, PublishSpec] | None = None,
        registry: RegistryWriter | None = None,
    ) -> None:
        self.producer = producer
        self.catalog = catalog
        self.source = source
        self.metrics = metrics or Metrics()
        self.provenance = provenance
        self.publishing = dict(publishing or {})
        """Per topic: the format its events are written in (``publish:`` of the routes file)."""
        self.registry = registry
        """Frames data for topics in a Schema Registry format."""

    @activity.defn(name=PUBLISH_ACTIVITY)
    async def publish(self, req: PublishRequest) -> Published:
        """Encode by the type's schema and publish; bad data fails without retries."""
        info = activity.info()
        ce_id = event_id_for(info.workflow_id or "", info.workflow_run_id or "",
                             info.activity_id, req.name)  # fmt: skip
        content_type, body = await self._data(req, ce_id)
        try:
            record = encode_event(
                self.catalog,
                type=req.type,
                data=req.data,
                id=ce_id,
                source=self.source,
                key=req.key,
                subject=req.subject,
                tenant_id=req.tenant_id,
                correlation_id=req.correlation_id or info.workflow_id,
                causation_id=req.causation_id,
                # The activity's span when tracing is on, else the triggering event's.
                traceparent=outgoing_traceparent(req.traceparent),
                content_type=content_type,
                extensions=req.extensions,
                body=body,
            )
        except BridgeError as exc:
            # The data will not fit its schema on any attempt: fail at once, naming the field.
            raise _failure(exc, req) from exc
        try:
            meta = await self.producer.send_and_wait(
                req.topic, value=record.value, key=record.key, headers=record.headers
            )
        except KafkaError as exc:
            if kafka.is_permanent(exc):
                raise rejected(req, ce_id, record, exc) from exc
            # Retried with the same ce_id until Kafka takes it (the workflow's policy).
            raise ApplicationError(
                f"publishing to {req.topic} failed: {exc}", type=type(exc).__name__
            ) from exc
        self.metrics.events_published.labels(req.topic, req.kind).inc()
        if req.kind == COMPENSATION:
            self.metrics.compensations.labels(info.workflow_type, req.name).inc()
        if self.provenance is not None:
            self.provenance.published(
                ce_id=ce_id, type=req.type, topic=req.topic, partition=meta.partition,
                offset=meta.offset, published_kind=req.kind, workflow_id=info.workflow_id or "",
                causation_id=req.causation_id, tenant_id=req.tenant_id,
            )  # fmt: skip
        return Published(ce_id, req.type, req.topic, meta.partition, meta.offset)

    async def _data(self, req: PublishRequest, ce_id: str) -> tuple[str, bytes | None]:
        """The content type of ``req``'s data on its topic, and the data when it is framed
        for the Schema Registry (``None``: ``encode_event`` encodes it)."""
        spec = self.publishing.get(req.topic)
        if spec is None or spec.format is None:
            return req.content_type, None
        if not spec.registry:
            return (AVRO if spec.format == "avro" else JSON), None
        if self.registry is None:
            raise ApplicationError(
                f"cannot publish {req.type} event {ce_id} to {req.topic}: the topic is "
                f"written {spec.format} and this worker has no Schema Registry "
                "(KTB_SCHEMA_REGISTRY_URL)",
                {"topic": req.topic, "ce_id": ce_id},
                type="ConfigError",
                non_retryable=True,
            )
        try:
            framed = await self.registry.encode(req.topic, spec, req.type, req.data)
        except BridgeError as exc:
            raise _failure(exc, req) from exc
        return framed.content_type, framed.body


def _failure(exc: BridgeError, req: PublishRequest) -> ApplicationError:
    """A failure to encode ``req``: retried when transient (the Schema Registry not
    answering), at once and for good otherwise, naming the field or subject."""
    details: dict[str, Any] = {}
    if isinstance(exc, SchemaMismatchError):
        details["field"] = exc.field
    subject = getattr(exc, "subject", None)
    if subject is not None:
        details.update(topic=req.topic, subject=subject)
    transient = isinstance(exc, TransientError)
    return ApplicationError(
        exc.message,
        details,
        type=type(exc).__name__,
        non_retryable=not transient,
    )
