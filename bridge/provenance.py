"""Provenance: what the bridge did with each event, kept in Kafka itself.

Every handled event gets one JSON record on the ``ktb.provenance`` topic (key:
the event id): where it was read, the route, the action and outcome, the
workflow it touched. Every event an activity publishes gets one too (key: the
workflow id). The records survive restarts and are shared by all bridge
instances; readers (the HTTP API) rebuild their index from the topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.dispatch import Result
from bridge.envelope import TENANT, Event, RecordLike, ce_attribute

TOPIC = "ktb.provenance"
log = logging.getLogger("ktb.provenance")
_dumps = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class EventProvenance:
    """What happened to one consumed event."""

    event_id: str | None
    event_type: str | None
    tenant_id: str | None
    key: str | None
    topic: str
    partition: int
    offset: int
    route: str | None
    action: str | None
    outcome: str
    workflow_id: str | None
    run_id: str | None
    detail: str | None
    at: str
    via: str
    kind: Literal["event"] = "event"


@dataclass(frozen=True)
class PublishedProvenance:
    """One event a workflow published (outcome or compensation)."""

    ce_id: str
    type: str
    topic: str
    partition: int
    offset: int
    published_kind: str
    workflow_id: str
    causation_id: str | None
    tenant_id: str | None
    at: str
    kind: Literal["published"] = "published"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def parse(value: bytes) -> EventProvenance | PublishedProvenance | None:
    """Read one provenance record back; ``None`` for anything unrecognised."""
    try:
        raw: dict[str, Any] = json.loads(value)
        if raw.get("kind") == "event":
            return EventProvenance(**raw)
        if raw.get("kind") == "published":
            return PublishedProvenance(**raw)
    except (ValueError, TypeError):
        pass
    return None


class ProvenanceWriter:
    """Appends provenance records without waiting for each acknowledgement."""

    def __init__(self, producer: AIOKafkaProducer, topic: str = TOPIC, via: str = "live") -> None:
        self.producer = producer
        self.topic = topic
        self.via = via

    async def _send(self, key: str | None, payload: Any) -> None:
        try:
            delivery = await self.producer.send(
                self.topic,
                # Flat dataclasses of scalars: their __dict__ is the record, no deep copy.
                value=_dumps(vars(payload)).encode(),
                key=key.encode() if key else None,
            )
        except KafkaError as exc:  # provenance is a record, never a reason to stall events
            log.warning("could not record provenance: %s", exc)
            return
        delivery.add_done_callback(_log_failed_delivery)

    async def event(self, record: RecordLike, event: Event | None, result: Result) -> None:
        """Record what happened to one consumed record."""
        event_id = event.id if event else ce_attribute(record.headers, "id")
        await self._send(
            event_id,
            EventProvenance(
                event_id=event_id,
                event_type=event.type if event else ce_attribute(record.headers, "type"),
                tenant_id=event.tenant_id if event else ce_attribute(record.headers, TENANT),
                key=record.key.decode("utf-8", "replace") if record.key is not None else None,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                route=result.route,
                action=result.action,
                outcome=result.outcome.value,
                workflow_id=result.workflow_id,
                run_id=result.run_id,
                detail=result.detail,
                at=_now(),
                via=self.via,
            ),
        )

    async def published(
        self,
        *,
        ce_id: str,
        type: str,
        topic: str,
        partition: int,
        offset: int,
        published_kind: str,
        workflow_id: str,
        causation_id: str | None,
        tenant_id: str | None,
    ) -> None:
        """Record one event published by a workflow activity."""
        await self._send(
            workflow_id,
            PublishedProvenance(
                ce_id=ce_id,
                type=type,
                topic=topic,
                partition=partition,
                offset=offset,
                published_kind=published_kind,
                workflow_id=workflow_id,
                causation_id=causation_id,
                tenant_id=tenant_id,
                at=_now(),
            ),
        )


def _log_failed_delivery(delivery: asyncio.Future[Any]) -> None:
    """Delivery is not awaited on the hot path; a failure is logged, never raised."""
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("could not record provenance: %s", delivery.exception())
