"""``/processes``: workflow status, progress, result and published events; listing; SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from temporalio.client import WorkflowExecution, WorkflowExecutionStatus

from bridge.api import lookup, problems
from bridge.api.auth import Caller
from bridge.api.event_view import published_events
from bridge.api.models import ProcessPage, ProcessState, ProcessStatus, ProcessView
from bridge.api.problems import Problem
from bridge.api.state import ApiState, CallerDep, State
from bridge.temporal import visibility

router = APIRouter(tags=["processes"])

HEARTBEAT_S = 15.0
"""A comment line this often keeps idle streams open through proxies."""
WorkflowId = Annotated[
    str, Path(min_length=1, max_length=visibility.MAX_CHARS, pattern=visibility.PATTERN)
]


async def visible_execution(state: ApiState, caller: Caller, workflow_id: str) -> WorkflowExecution:
    """The latest run of ``workflow_id``, or 404 if there is none the caller may see."""
    execution = await lookup.describe_visible(state.client, caller, workflow_id)
    if execution is None:
        raise _not_found(workflow_id)
    return execution


def _not_found(workflow_id: str) -> Problem:
    return Problem(404, "not-found", f"no process {workflow_id!r}")


@router.get(
    "/processes/{workflow_id}",
    summary="A process: status, progress, result or failure, published events",
    response_model=ProcessView,
    responses=problems.responses(401, 404, 422, 503),
)
async def get_process(state: State, caller: CallerDep, workflow_id: WorkflowId) -> ProcessView:
    """The latest run of a workflow; another tenant's is a 404."""
    execution = await visible_execution(state, caller, workflow_id)
    result, failure = await lookup.outcome(state.client, execution)
    published = published_events(await state.store.published(workflow_id, caller.scope))
    memo = await lookup.call(execution.memo())
    trigger = memo.get("ktb")
    return ProcessView(
        **lookup.summary(execution).model_dump(),
        progress=await lookup.progress(state.client, execution, state.settings.api_query_timeout_s),
        result=result,
        failure=failure,
        trigger=trigger if isinstance(trigger, dict) else None,
        published=published,
        compensations=[p for p in published if p.kind == "compensation"],
    )


@router.get(
    "/processes",
    summary="List processes through Temporal visibility, newest first, in pages",
    response_model=ProcessPage,
    responses=problems.responses(400, 401, 422, 503),
)
async def list_processes(
    state: State,
    caller: CallerDep,
    type: Annotated[
        str | None, Query(max_length=256, pattern=visibility.PATTERN, description="Workflow type")
    ] = None,
    status: Annotated[ProcessStatus | None, Query(description="Execution status")] = None,
    tenant: Annotated[
        str | None, Query(max_length=256, pattern=visibility.PATTERN, description="Tenant id")
    ] = None,
    key: Annotated[
        str | None,
        Query(
            max_length=visibility.MAX_CHARS, pattern=visibility.PATTERN, description="Business key"
        ),
    ] = None,
    attribute: Annotated[
        list[str] | None,
        Query(
            max_length=10,
            description="`Name=value`: a Keyword search attribute a route sets "
            "(`search_attributes:`), e.g. `CustomerId=c-1`; repeat for several",
        ),
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
    page_token: Annotated[
        str | None, Query(max_length=4096, description="`next_page_token` of the previous page")
    ] = None,
) -> ProcessPage:
    """Processes matching every given filter; a tenant only ever lists its own."""
    # Every filter is checked (422) before anything is answered, an empty page included.
    attributes_equal = [lookup.attribute_filter(a) for a in attribute or ()]
    if caller.authenticated:
        if tenant is not None and tenant != caller.tenant:
            return ProcessPage(items=[], next_page_token=None)
        tenant = caller.tenant
    query = lookup.visibility_query(
        workflow_type=type,
        status=status,
        tenant=tenant,
        key=key,
        attributes_equal=attributes_equal,
    )
    items, token = await lookup.list_page(state.client, query, page_size, page_token)
    return ProcessPage(items=[lookup.summary(e) for e in items], next_page_token=token)


@router.get(
    "/processes/{workflow_id}/stream",
    summary="Server-sent events: the process's state on every change, until it closes",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`event: state` messages (data: a ProcessState), the last one "
            "once the process has closed; `event: error` if Temporal stops answering for "
            "longer than `KTB_API_STREAM_OUTAGE_S`, or (status 404) when the id's latest run "
            "is gone or is not the caller's tenant's",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problems.responses(401, 404, 422, 503),
    },
)
async def stream_process(
    state: State, caller: CallerDep, workflow_id: WorkflowId
) -> StreamingResponse:
    """Follow a process: its state now and on every change of status or progress."""
    first = await visible_execution(state, caller, workflow_id)
    return StreamingResponse(
        _states(state, caller, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def process_state(
    state: ApiState, execution: WorkflowExecution, previous: ProcessState | None = None
) -> ProcessState:
    """A process's state as one stream message carries it.

    Progress only changes when the workflow makes progress, which grows its
    history: the query (a task for the worker) runs again only then.
    """
    result, failure = await lookup.outcome(state.client, execution)
    if (
        previous is not None
        and previous.run_id == execution.run_id
        and previous.history_length == execution.history_length
    ):
        progress = previous.progress
    else:
        progress = await lookup.progress(
            state.client, execution, state.settings.api_query_timeout_s
        )
    return ProcessState(
        workflow_id=execution.id,
        run_id=execution.run_id,
        status=lookup.status_of(execution),
        progress=progress,
        result=result,
        failure=failure,
        history_length=execution.history_length,
    )


def sse(event: str, data: Any, event_id: int) -> bytes:
    """One server-sent event."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _states(
    state: ApiState, caller: Caller, first: WorkflowExecution
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    interval = state.settings.api_stream_interval_s
    last: ProcessState | None = None
    sent = 0
    quiet_since = loop.time()
    outage_since: float | None = None
    execution: WorkflowExecution | None = first
    while True:
        try:
            if execution is None:
                # Every poll describes the latest run afresh: a new run of the id may
                # belong to another tenant, and then the stream ends like a missing one.
                execution = await lookup.describe(state.client, first.id)
                if execution is None or not lookup.visible_to(caller, execution):
                    sent += 1
                    yield sse("error", {"status": 404, "detail": _not_found(first.id).detail}, sent)
                    return
            current = await process_state(state, execution, last)
        except Problem as problem:
            # Ride out a short Temporal outage; the stream ends only if it lasts.
            now = loop.time()
            outage_since = now if outage_since is None else outage_since
            if problem.status != 503 or now - outage_since >= state.settings.api_stream_outage_s:
                sent += 1
                yield sse("error", {"status": problem.status, "detail": problem.detail}, sent)
                return
            await asyncio.sleep(interval)
            continue
        outage_since = None
        # history_length is excluded from dumps: it says when to query, it is no news.
        if last is None or current.model_dump() != last.model_dump():
            sent += 1
            yield sse("state", current.model_dump(mode="json"), sent)
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= HEARTBEAT_S:
            yield b": keep-alive\n\n"
            quiet_since = loop.time()
        last = current
        if execution.status not in (None, WorkflowExecutionStatus.RUNNING):
            return
        await asyncio.sleep(interval)
        execution = None
