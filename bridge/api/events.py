"""``POST /events``: produce a CloudEvent, and optionally wait for its process.

An event produced here takes the same path as any other: Kafka, the bridge's
router, Temporal. The API predicts the workflow with the same routes the bridge
uses (``Ingress.plan``); what actually happened is ``GET /events/{event_id}``
(``bridge.api.event_view``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from bridge.api import lookup, problems
from bridge.api.auth import Caller
from bridge.api.event_view import event_url, location, status_of_outcome
from bridge.api.inbound import JSON, STRUCTURED, extensions, parse_request
from bridge.api.models import (
    EventAccepted,
    EventResult,
    EventStatus,
    Failure,
    StructuredEvent,
)
from bridge.api.problems import Problem
from bridge.api.state import ApiState, CallerDep, State
from bridge.codec import AVRO
from bridge.envelope import KafkaRecord, encode_event
from bridge.errors import DatabaseUnavailable, PermanentError, TransientError
from bridge.store import Reservation

router = APIRouter(tags=["events"])
log = logging.getLogger("ktb.api")

POLL_S = 0.25
"""How often a waiting request looks for the event's provenance and process."""
SOURCE = "ktb-api"

_BINARY_HEADERS = [
    ("ce-specversion", "Binary mode: `1.0` (its presence selects binary mode)"),
    ("ce-id", "Binary mode: event id (default: a new UUID)"),
    ("ce-type", "Binary mode: event type"),
    ("ce-source", "Binary mode: event source"),
    ("ce-subject", "Binary mode: subject"),
    ("ce-time", "Binary mode: RFC 3339 time"),
    ("ce-partitionkey", "Binary mode: the Kafka key (business key)"),
    ("ce-tenantid", "Binary mode: tenant; must be the API key's"),
    ("traceparent", "W3C trace context, carried onto the Kafka record"),
]
_EVENT_SCHEMA = {"$ref": "#/components/schemas/StructuredEvent"}
POST_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in _BINARY_HEADERS
    ],
    "requestBody": {
        "required": True,
        "description": "A CloudEvent: structured mode, or binary mode (data in the body, "
        "attributes in ce-* headers)",
        "content": {
            STRUCTURED: {"schema": _EVENT_SCHEMA},
            JSON: {
                "schema": {
                    "type": "object",
                    "description": "Structured event, or the data "
                    "in binary mode when ce-specversion is sent",
                }
            },
        },
    },
}


@router.post(
    "/events",
    status_code=202,
    summary="Produce a CloudEvent to the topic its type maps to",
    response_model=EventAccepted,
    responses={
        200: {"model": EventResult, "description": "The process ended within `wait`"},
        **problems.responses(400, 401, 403, 409, 413, 415, 422, 503),
    },
    openapi_extra=POST_OPENAPI,
)
async def post_event(
    request: Request,
    state: State,
    caller: CallerDep,
    wait: Annotated[
        float, Query(ge=0, le=3600, description="Seconds to wait for the process to end")
    ] = 0,
) -> JSONResponse:
    """Validate the event against its type's schema, produce it, optionally wait for the result."""
    inbound = parse_request(
        request.headers.get("content-type"), request.headers, await request.body()
    )
    produced, duplicate = await produce(state, caller, inbound, request.headers.get("traceparent"))
    accepted = EventAccepted(
        operation_id=produced.event_id,
        duplicate=duplicate,
        type=produced.type,
        tenant_id=produced.tenant_id,
        produced=location(produced),
        workflow_id=produced.workflow_id,
        status_url=event_url(produced.event_id),
        stream_url=lookup.process_url(produced.workflow_id) + "/stream"
        if produced.workflow_id
        else None,
    )
    headers = {"Location": accepted.status_url}
    if wait > 0:
        try:
            timeout = min(wait, state.settings.api_wait_max_s)
            settled = await settle(state, caller, accepted, timeout)
        except (Problem, DatabaseUnavailable) as problem:
            # The event is on Kafka: Temporal not answering the wait is not a failed request.
            log.warning("waiting for the process of %s: %s", accepted.operation_id, problem)
            settled = None
        if settled is not None:
            return JSONResponse(settled.model_dump(mode="json"), 200, headers=headers)
    return JSONResponse(accepted.model_dump(mode="json"), 202, headers=headers)


def _tenant(caller: Caller, inbound: StructuredEvent) -> str | None:
    if not caller.authenticated:
        return inbound.tenantid
    if inbound.tenantid is not None and inbound.tenantid != caller.tenant:
        raise Problem(403, "forbidden-tenant", "tenantid must be your API key's tenant")
    return caller.tenant


def _duplicate(caller: Caller, earlier: Reservation) -> tuple[Reservation, bool]:
    """The answer to an id used before: the earlier event if the caller may see it."""
    if not caller.may_see(earlier.tenant_id):
        raise Problem(409, "event-id-taken", f"event id {earlier.event_id!r} is already used")
    return earlier, True


async def produce(
    state: ApiState, caller: Caller, inbound: StructuredEvent, traceparent: str | None
) -> tuple[Reservation, bool]:
    """Produce ``inbound`` unless its id was used before; ``(event, duplicate)``.

    The id is reserved in the database before anything is produced: of requests
    racing on one new id (on any replica), exactly one produces it.
    """
    tenant = _tenant(caller, inbound)
    if inbound.type not in state.catalog:
        raise Problem(
            422,
            "unknown-event-type",
            f"no schema for event type {inbound.type!r}",
            known_types=state.catalog.names(),
        )
    topic = state.topic_for(inbound.type)
    if topic is None:
        raise Problem(
            422,
            "unmapped-event-type",
            f"no topic for {inbound.type!r}: no route reads it and KTB_API_TOPICS has none",
        )
    event_id = inbound.id or str(uuid.uuid4())
    try:
        record = encode_event(
            state.catalog,
            type=inbound.type,
            data=inbound.data,
            id=event_id,
            source=inbound.source or SOURCE,
            key=inbound.partitionkey,
            time=inbound.time,
            subject=inbound.subject,
            tenant_id=tenant,
            correlation_id=inbound.correlationid,
            causation_id=inbound.causationid,
            traceparent=inbound.traceparent or traceparent,
            tracestate=inbound.tracestate,
            content_type=AVRO,
            extensions=extensions(inbound),
        )
    except PermanentError as exc:
        raise Problem(
            422,
            exc.error_type.replace("_", "-"),
            exc.message,
            field=getattr(exc, "field", None),
        ) from exc
    reserved = Reservation(event_id, inbound.type, tenant, inbound.partitionkey, topic, None)
    earlier = await state.store.reserve(reserved)
    if earlier is not None:
        return _duplicate(caller, earlier)
    sent = False
    try:
        meta = await state.producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=record.headers
        )
        sent = True
    except KafkaError as exc:
        raise Problem(503, "kafka-unavailable", f"could not produce to {topic}: {exc}") from exc
    finally:
        # Failed or cancelled: release the id so a retry of the request can produce it.
        if not sent:
            await _release(state, event_id)
    state.metrics.api_events_produced.labels(topic).inc()
    produced = Reservation(
        event_id,
        inbound.type,
        tenant,
        inbound.partitionkey,
        topic,
        await predict_workflow(state, record, topic),
        meta.partition,
        meta.offset,
    )
    await state.store.produced_at(produced)
    return produced, False


async def _release(state: ApiState, event_id: str) -> None:
    try:
        await state.store.release(event_id)
    except DatabaseUnavailable as exc:
        # The id stays taken with nothing produced: a retry is answered as a duplicate.
        log.error("could not release event id %s after a failed produce: %s", event_id,
                  exc.message)  # fmt: skip


async def predict_workflow(state: ApiState, record: KafkaRecord, topic: str) -> str | None:
    """The workflow the bridge's routes map this record to (``None``: none, no routes, or
    the Schema Registry not answering).

    The bridge's own ``Ingress.predict`` decides: the same decoder, routing and
    unmatched rule as the bridge, acting on nothing.
    """
    if state.ingress is None:
        return None
    planned = Produced(topic=topic, key=record.key, value=record.value, headers=record.headers)
    try:
        _, action = await state.ingress.predict(planned)
    except (PermanentError, TransientError):
        return None
    return action.workflow_id if action else None


@dataclass
class Produced:
    """A record this API produced, as the bridge will read it (for ``Ingress.plan``)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    partition: int = 0
    offset: int = 0
    timestamp: int = 0


async def settle(
    state: ApiState, caller: Caller, accepted: EventAccepted, timeout: float
) -> EventResult | None:
    """Wait for the event's process to end; ``None`` if it has not within ``timeout``.

    Only a process of a tenant the caller may see is followed: the bridge dead-letters
    an event whose target is another tenant's, and a predicted id that names another
    tenant's workflow is never waited on or read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    event_id = accepted.operation_id
    workflow_id: str | None = None
    run_id: str | None = None
    while workflow_id is None:
        primary = await state.store.primary(event_id, caller.scope)
        if primary is not None:
            if primary.workflow_id is None:
                return _result(
                    accepted, status_of_outcome(primary.outcome), None, detail=primary.detail
                )
            workflow_id, run_id = primary.workflow_id, primary.run_id
            break
        # Without provenance records (a bridge that writes none), Temporal tells.
        if accepted.workflow_id is not None:
            found = await lookup.describe_visible(state.client, caller, accepted.workflow_id)
            if found is not None:
                workflow_id, run_id = found.id, found.run_id
                break
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(remaining, POLL_S))
    remaining = deadline - loop.time()
    if await lookup.describe_visible(state.client, caller, workflow_id, run_id) is None:
        return None
    if remaining <= 0 or not await lookup.wait_closed(state.client, workflow_id, run_id, remaining):
        return None
    execution = await lookup.describe_visible(state.client, caller, workflow_id, run_id)
    if execution is None:
        return None
    result, failure = await lookup.outcome(state.client, execution)
    status = lookup.status_of(execution)
    return _result(
        accepted,
        EventStatus(status.value) if status else EventStatus.UNKNOWN,
        execution.run_id,
        result=result,
        failure=failure,
        workflow_id=workflow_id,
    )


def _result(
    accepted: EventAccepted,
    status: EventStatus,
    run_id: str | None,
    *,
    result: Any = None,
    failure: Failure | None = None,
    detail: str | None = None,
    workflow_id: str | None = None,
) -> EventResult:
    fields = accepted.model_dump()
    if workflow_id is not None:
        fields["workflow_id"] = workflow_id
        fields["stream_url"] = lookup.process_url(workflow_id) + "/stream"
    return EventResult(
        **fields, status=status, run_id=run_id, result=result, failure=failure, detail=detail
    )
