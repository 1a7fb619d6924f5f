"""``GET /events/{event_id}``: an event's provenance, as the caller's tenant may see it.

Where the event was produced and read, what the bridge (or a replay, or a redrive)
did with it, the process it reached and the events that process published: from
the read model of provenance (``bridge.store``, the ids ``POST /events`` took included)
and Temporal.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query
from temporalio.client import WorkflowExecution

from bridge.api import lookup, problems
from bridge.api.auth import Caller
from bridge.api.models import (
    EventPage,
    EventRecord,
    EventStatus,
    EventView,
    Handling,
    Location,
    PublishedEvent,
)
from bridge.api.problems import Problem
from bridge.api.replays import guard
from bridge.api.state import ApiState, CallerDep, State
from bridge.decoding import Decoder, render_decoded
from bridge.dlq.records import record_at
from bridge.envelope import ce_attribute
from bridge.provenance import EventProvenance, PublishedProvenance
from bridge.store import Reservation
from bridge.store.provenance import Cursor, primary_of
from bridge.temporal import visibility

router = APIRouter(tags=["events"])


@router.get(
    "/events/{event_id}",
    summary="Provenance of an event: where it was read, what the bridge did, the process",
    response_model=EventView,
    responses=problems.responses(401, 404, 422, 503),
)
async def get_event(
    state: State,
    caller: CallerDep,
    event_id: Annotated[str, Path(min_length=1, max_length=256, pattern=visibility.PATTERN)],
) -> EventView:
    """Everything known about one event; another tenant's event is a 404.

    Only the caller's tenant's records of the id are read (ids are not unique across
    tenants), and a workflow of another tenant that a record names (one written before
    the bridge checked targets' tenants) is left out, as are its published events.
    """
    handlings, produced = await asyncio.gather(
        state.store.handlings(event_id, caller.scope), state.store.produced(event_id)
    )
    primary = primary_of(handlings)
    if produced is not None and not caller.may_see(produced.tenant_id):
        produced = None
    workflow_id = primary.workflow_id if primary else None
    run_id = primary.run_id if primary else None
    tenant = primary.tenant_id if primary else produced.tenant_id if produced else None
    read: Location | None = _read_location(primary)
    event_type = primary.event_type if primary else produced.type if produced else None
    key = primary.key if primary else produced.key if produced else None
    route = primary.route if primary else None
    action = primary.action if primary else None
    outcome = primary.outcome if primary else None
    execution: WorkflowExecution | None = None
    if primary is None:
        # Not in the read model: a bridge that records no provenance, an id past the
        # retention, or an event still on its way. Visibility knows the workflow an event started.
        owner = caller.tenant if caller.authenticated else None
        execution = await lookup.find_by_event(state.client, event_id, owner)
        if execution is None and produced is None:
            raise _not_found(event_id)
    if primary is None and execution is not None:
        if produced is None:
            tenant = lookup.tenant_of(execution)
        workflow_id, run_id = execution.id, execution.run_id
        memo = (await lookup.call(execution.memo())).get("ktb") or {}
        event_type, key = memo.get("event_type"), memo.get("key")
        # The workflow this event started: its memo says what the bridge did (the route,
        # and the action and outcome in workflows started by the current bridge).
        route, action, outcome = memo.get("route"), memo.get("action"), memo.get("outcome")
        if memo.get("topic") is not None:
            read = Location(topic=memo["topic"], partition=memo["partition"], offset=memo["offset"])
    if not caller.may_see(tenant):
        raise _not_found(event_id)
    runs = {(h.workflow_id, h.run_id) for h in handlings if h.workflow_id}
    described = await _described_runs(state, caller, runs)
    foreign = _foreign(caller, described)
    if (workflow_id, run_id) in foreign:
        workflow_id = run_id = None
    elif execution is None and workflow_id is not None:
        execution = described.get((workflow_id, run_id))
    published: list[PublishedProvenance] = []
    if workflow_id is not None:
        reading = state.store.published(workflow_id, caller.scope)
        if execution is None:
            execution, published = await asyncio.gather(
                lookup.describe(state.client, workflow_id, run_id), reading
            )
        else:
            published = await reading
    process = lookup.summary(execution) if execution is not None else None
    return EventView(
        event_id=event_id,
        type=event_type,
        tenant_id=tenant,
        key=key,
        status=_event_status(primary, process),
        produced=location(produced) if produced else None,
        read=read,
        route=route,
        action=action,
        outcome=outcome,
        detail=primary.detail if primary else None,
        workflow_id=workflow_id,
        run_id=run_id,
        process=process,
        published=published_events(published),
        handlings=[_handling(h, (h.workflow_id, h.run_id) in foreign) for h in handlings],
    )


@router.get(
    "/events/{event_id}/record",
    summary="The event's record as the bridge read it: headers and data, decoded",
    responses={
        200: {
            "description": "The record as `ktb tail` prints it: coordinates, key, headers, "
            "and `data` (or `error` when it does not decode)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **problems.responses(401, 404, 422, 503),
    },
)
async def get_event_record(
    state: State,
    caller: CallerDep,
    event_id: Annotated[str, Path(min_length=1, max_length=256, pattern=visibility.PATTERN)],
) -> dict[str, Any]:
    """Read back from Kafka where the bridge read it (or, not read yet, where ``POST
    /events`` put it); another tenant's event, or a record gone with retention, is a 404."""
    handlings, produced = await asyncio.gather(
        state.store.handlings(event_id, caller.scope), state.store.produced(event_id)
    )
    primary = primary_of(handlings)
    where = _read_location(primary)
    if where is None and produced is not None and caller.may_see(produced.tenant_id):
        where = location(produced)
    if where is None:
        raise _not_found(event_id)
    record, missing = await guard(record_at(state.settings, where.topic, where.partition,
                                            where.offset))  # fmt: skip
    if record is None:
        raise Problem(404, "not-found", f"the record of {event_id!r} cannot be read: {missing}")
    decoder = state.ingress.decoder if state.ingress is not None else Decoder(state.catalog)
    view = await render_decoded(decoder, record)
    # The coordinates came from the caller's own records; the record there must still be
    # the event (and, when it names one, of a tenant the caller may see) to be shown.
    shown_id = ce_attribute(record.headers, "id") or (view.get("event") or {}).get("id")
    tenant = ce_attribute(record.headers, "tenantid")
    if shown_id != event_id or (tenant is not None and not caller.may_see(tenant)):
        raise Problem(404, "not-found", f"{where.topic}[{where.partition}]@{where.offset} "
                      f"no longer holds {event_id!r}")  # fmt: skip
    return view


@router.get(
    "/events",
    summary="Provenance records, newest first, by business key, workflow or read position",
    response_model=EventPage,
    responses=problems.responses(401, 422, 503),
)
async def list_events(
    state: State,
    caller: CallerDep,
    key: Annotated[
        str | None,
        Query(
            max_length=visibility.MAX_CHARS, pattern=visibility.PATTERN, description="Business key"
        ),
    ] = None,
    workflow_id: Annotated[
        str | None,
        Query(
            max_length=visibility.MAX_CHARS,
            pattern=visibility.PATTERN,
            description="Workflow an event reached",
        ),
    ] = None,
    topic: Annotated[
        str | None,
        Query(max_length=249, pattern=visibility.PATTERN, description="Topic it was read from"),
    ] = None,
    partition: Annotated[int | None, Query(ge=0, description="With `topic`")] = None,
    offset: Annotated[int | None, Query(ge=0, description="With `topic` and `partition`")] = None,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
    page_token: Annotated[
        str | None, Query(max_length=4096, description="`next_page_token` of the previous page")
    ] = None,
) -> EventPage:
    """Every record of the caller's tenant matching every given filter (a record per
    handling: redeliveries, replays and redrives add some), in pages."""
    read = None
    if (topic, partition, offset) != (None, None, None):
        if topic is None or partition is None or offset is None:
            raise Problem(422, "validation-error", "topic, partition and offset go together")
        read = (topic, partition, offset)
    after = _cursor(page_token) if page_token else None
    found = await state.store.search(
        caller.scope, key=key, workflow_id=workflow_id, read=read, after=after,
        limit=page_size + 1,
    )  # fmt: skip
    shown = [item for item, _ in found[:page_size]]
    runs = {(i.workflow_id, i.run_id) for i in shown if i.workflow_id}
    foreign = _foreign(caller, await _described_runs(state, caller, runs))
    items = [
        EventRecord(
            **_handling(item, (item.workflow_id, item.run_id) in foreign).model_dump(),
            event_id=item.event_id or "",
            type=item.event_type,
            tenant_id=item.tenant_id,
            key=item.key,
            status_url=event_url(item.event_id or ""),
        )
        for item in shown
    ]
    more = len(found) > page_size
    return EventPage(items=items, next_page_token=_token(found[page_size - 1][1]) if more else None)


def event_url(event_id: str) -> str:
    """``/events/<event id>`` with the id escaped for a path."""
    return "/events/" + quote(event_id, safe=":")


def _token(cursor: Cursor) -> str:
    at, partition, offset, index = cursor
    return lookup.encode_page_token(json.dumps([at.isoformat(), partition, offset, index]).encode())


def _cursor(token: str) -> Cursor:
    """The cursor inside a ``page_token`` (a 422 for one the API did not issue)."""
    try:
        at, partition, offset, *index = json.loads(lookup.decode_page_token(token))
        # Tokens issued before batches of items had no index: their rows all have 0.
        (index_,) = index or [0]
        return datetime.fromisoformat(at), int(partition), int(offset), int(index_)
    except (ValueError, TypeError) as exc:
        raise Problem(422, "validation-error", "page_token is not a token we issued") from exc


Run = tuple[str, str | None]
"""A workflow id and run id a record names."""


async def _described_runs(
    state: ApiState, caller: Caller, runs: set[Run]
) -> dict[Run, WorkflowExecution | None]:
    """The runs a record names, described to tell whose they are: one describe each,
    at once (at most a page's worth), none with auth off (every run may be seen)."""
    if not caller.authenticated or not runs:
        return {}
    pairs = list(runs)
    executions = await asyncio.gather(
        *(lookup.describe(state.client, workflow_id, run_id) for workflow_id, run_id in pairs)
    )
    return dict(zip(pairs, executions, strict=True))


def _foreign(caller: Caller, described: dict[Run, WorkflowExecution | None]) -> set[Run]:
    """The runs that belong to a tenant the caller may not see (a record written before
    the bridge checked targets' tenants)."""
    return {
        run
        for run, execution in described.items()
        if execution is not None and not lookup.visible_to(caller, execution)
    }


def _not_found(event_id: str) -> Problem:
    return Problem(404, "not-found", f"no event {event_id!r}")


def _read_location(item: EventProvenance | None) -> Location | None:
    if item is None:
        return None
    return Location(topic=item.topic, partition=item.partition, offset=item.offset)


def _event_status(primary: EventProvenance | None, process: Any) -> EventStatus:
    if process is not None and process.status is not None:
        return EventStatus(process.status.value)
    if primary is None:
        return EventStatus.PENDING
    return status_of_outcome(primary.outcome)


def _handling(item: EventProvenance, foreign: bool = False) -> Handling:
    """One record of an event; ``foreign``: its workflow is another tenant's, left out."""
    return Handling(
        read=Location(topic=item.topic, partition=item.partition, offset=item.offset),
        via=item.via,
        route=item.route,
        action=item.action,
        outcome=item.outcome,
        workflow_id=None if foreign else item.workflow_id,
        run_id=None if foreign else item.run_id,
        detail=item.detail,
        at=item.at,
    )


def published_events(items: list[PublishedProvenance]) -> list[PublishedEvent]:
    """Provenance records of published events as the API shows them."""
    return [
        PublishedEvent(
            ce_id=p.ce_id,
            type=p.type,
            kind=p.published_kind,
            topic=p.topic,
            partition=p.partition,
            offset=p.offset,
            at=p.at,
        )
        for p in items
    ]


def location(produced: Reservation) -> Location | None:
    """Where the API produced an event; ``None`` until Kafka acknowledged it."""
    if produced.partition is None or produced.offset is None:
        return None
    return Location(topic=produced.topic, partition=produced.partition, offset=produced.offset)


def status_of_outcome(outcome: str) -> EventStatus:
    """An event's status from the bridge's outcome when no process tells more."""
    if outcome == EventStatus.SKIPPED.value:
        return EventStatus.SKIPPED
    if outcome == EventStatus.DEAD_LETTERED.value:
        return EventStatus.DEAD_LETTERED
    return EventStatus.UNKNOWN
