"""Reading processes from Temporal: describe, progress, result, visibility listing.

Temporal being unreachable is a 503 problem; a request Temporal refuses as invalid
is a 422; a workflow that does not exist is ``None`` (the routers answer 404). The
server's own error text is logged, never answered: it can carry the visibility
store's SQL errors and the request's values.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import zlib
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote as url_quote

from temporalio.client import (
    Client,
    WorkflowContinuedAsNewError,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.exceptions import ApplicationError, TemporalError
from temporalio.service import RPCError, RPCStatusCode

from bridge.api.auth import Caller
from bridge.api.models import Failure, ProcessStatus, ProcessSummary
from bridge.api.problems import Problem
from bridge.sdk.workflow import PROGRESS_QUERY
from bridge.temporal import attributes, visibility

T = TypeVar("T")

STATUS = {
    WorkflowExecutionStatus.RUNNING: ProcessStatus.RUNNING,
    WorkflowExecutionStatus.COMPLETED: ProcessStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: ProcessStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: ProcessStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED: ProcessStatus.TERMINATED,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: ProcessStatus.CONTINUED_AS_NEW,
    WorkflowExecutionStatus.TIMED_OUT: ProcessStatus.TIMED_OUT,
}
VISIBILITY_STATUS = {
    ProcessStatus.RUNNING: "Running",
    ProcessStatus.COMPLETED: "Completed",
    ProcessStatus.FAILED: "Failed",
    ProcessStatus.CANCELED: "Canceled",
    ProcessStatus.TERMINATED: "Terminated",
    ProcessStatus.CONTINUED_AS_NEW: "ContinuedAsNew",
    ProcessStatus.TIMED_OUT: "TimedOut",
}
RPC_TIMEOUT = timedelta(seconds=10)
REFUSED = frozenset({RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.OUT_OF_RANGE})
"""Codes by which Temporal refuses the request itself: the caller's problem, not an outage."""
PAGE_TOKEN_VERSION = b"\x01"
log = logging.getLogger("ktb.api.temporal")


def unavailable(exc: BaseException) -> Problem:
    """The 503 problem for Temporal being unreachable or failing; ``exc`` is logged only."""
    log.warning("Temporal call failed: %s", exc)
    return Problem(503, "temporal-unavailable", "Temporal did not answer; try again later")


def refused(exc: RPCError) -> Problem:
    """The 422 problem for a request Temporal refuses as invalid; ``exc`` is logged only."""
    log.warning("Temporal refused a request as invalid: %s", exc)
    return Problem(
        422, "invalid-request", "Temporal refused the request as invalid; check ids and filters"
    )


def problem_of(exc: RPCError) -> Problem:
    """A 422 for a request Temporal refuses, else a 503; never with the server's text."""
    return refused(exc) if exc.status in REFUSED else unavailable(exc)


async def call(awaitable: Awaitable[T]) -> T:
    """Await a Temporal call; a failing call becomes a problem (``problem_of``)."""
    try:
        return await awaitable
    except RPCError as exc:
        raise problem_of(exc) from exc


def status_of(execution: WorkflowExecution) -> ProcessStatus | None:
    """The API's status name of an execution."""
    return STATUS.get(execution.status) if execution.status is not None else None


def tenant_of(execution: WorkflowExecution) -> str | None:
    """The ``KtbTenantId`` search attribute of an execution."""
    return execution.typed_search_attributes.get(attributes.TENANT_ID)


def process_url(workflow_id: str) -> str:
    """``/processes/<workflow id>`` with the id escaped for a path."""
    return "/processes/" + url_quote(workflow_id, safe=":")


def summary(execution: WorkflowExecution) -> ProcessSummary:
    """A listing entry for an execution."""
    sa = execution.typed_search_attributes
    url = process_url(execution.id)
    return ProcessSummary(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=status_of(execution),
        task_queue=execution.task_queue,
        start_time=execution.start_time,
        close_time=execution.close_time,
        tenant_id=sa.get(attributes.TENANT_ID),
        business_key=sa.get(attributes.BUSINESS_KEY),
        event_id=sa.get(attributes.EVENT_ID),
        status_url=url,
        stream_url=url + "/stream",
    )


async def describe(
    client: Client, workflow_id: str, run_id: str | None = None
) -> WorkflowExecutionDescription | None:
    """The execution's description, or ``None`` if there is no such workflow."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        return await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise problem_of(exc) from exc


async def progress(
    client: Client, execution: WorkflowExecution, timeout: float
) -> dict[str, Any] | None:
    """The ``ktb_progress`` query's answer while the workflow runs, else ``None``.

    A closed workflow, one without the query, or no worker answering in time
    all mean "no progress to show", not an error.
    """
    if execution.status is not WorkflowExecutionStatus.RUNNING:
        return None
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    try:
        value = await handle.query(PROGRESS_QUERY, rpc_timeout=timedelta(seconds=timeout))
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None
    return value if isinstance(value, dict) else {"value": value}


async def outcome(client: Client, execution: WorkflowExecution) -> tuple[Any, Failure | None]:
    """The result or failure of a closed execution; ``(None, None)`` while it runs."""
    if execution.status in (None, WorkflowExecutionStatus.RUNNING):
        return None, None
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    try:
        return await call(handle.result(follow_runs=False, rpc_timeout=RPC_TIMEOUT)), None
    except WorkflowFailureError as exc:
        return None, failure_of(exc)
    except WorkflowContinuedAsNewError as exc:
        return None, Failure(message=f"continued as new run {exc.new_execution_run_id}")


def failure_of(exc: WorkflowFailureError) -> Failure:
    """What a failed, cancelled, terminated or timed-out workflow reports."""
    cause: BaseException = exc.cause
    if isinstance(cause, ApplicationError):
        return Failure(message=cause.message, type=cause.type)
    if isinstance(cause, TemporalError):
        return Failure(message=str(cause) or type(cause).__name__, type=type(cause).__name__)
    return Failure(message=str(cause), type=type(cause).__name__)


def literal(value: str) -> str:
    """A visibility query string literal; a value ``visibility.is_safe`` refuses is a 422.

    The routes declare the same rule on their parameters (``visibility.PATTERN``),
    so this only answers for values that reach a query some other way.
    """
    try:
        return visibility.literal(value)
    except visibility.UnsafeValueError as exc:
        raise Problem(422, "validation-error", f"not a value Temporal can query: {exc}") from exc


ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
"""What a search attribute name in a filter may be (Temporal's names, nothing to escape)."""


def attribute_filter(text: str) -> tuple[str, str]:
    """``Name=value`` (a filter on a route's Keyword search attribute) as its two parts; a
    name that is not one, or a value Temporal cannot query, is a 422."""
    name, sep, value = text.partition("=")
    if not sep or not ATTRIBUTE_NAME.fullmatch(name):
        raise Problem(
            422,
            "validation-error",
            "attribute filters are `Name=value` with a search attribute name (letters, "
            "digits and '_', starting with a letter)",
        )
    literal(value)
    return name, value


def visibility_query(
    *,
    workflow_type: str | None = None,
    status: ProcessStatus | None = None,
    tenant: str | None = None,
    key: str | None = None,
    event_id: str | None = None,
    attributes_equal: Sequence[tuple[str, str]] = (),
) -> str:
    """A Temporal list filter over the bridge's search attributes, and those the routes set
    (``attributes_equal``: checked ``attribute_filter`` pairs)."""
    clauses = []
    if workflow_type:
        clauses.append(f"WorkflowType = {literal(workflow_type)}")
    if status:
        clauses.append(f"ExecutionStatus = {literal(VISIBILITY_STATUS[status])}")
    if tenant:
        clauses.append(f"{attributes.TENANT_ID.name} = {literal(tenant)}")
    if key:
        clauses.append(f"{attributes.BUSINESS_KEY.name} = {literal(key)}")
    if event_id:
        clauses.append(f"{attributes.EVENT_ID.name} = {literal(event_id)}")
    clauses += [f"{name} = {literal(value)}" for name, value in attributes_equal]
    return " AND ".join(clauses)


async def find_by_event(
    client: Client, event_id: str, tenant: str | None = None
) -> WorkflowExecution | None:
    """The workflow an event started, through visibility (``KtbEventId``), of ``tenant`` if set."""
    query = visibility_query(event_id=event_id, tenant=tenant)
    page, _ = await list_page(client, query, 1, None)
    return page[0] if page else None


async def describe_visible(
    client: Client, caller: Caller, workflow_id: str, run_id: str | None = None
) -> WorkflowExecutionDescription | None:
    """The run of ``workflow_id`` if it exists and belongs to a tenant ``caller`` may see.

    Another tenant's process is ``None``, exactly as a missing one (a 404 to the caller),
    and the refusal is logged.
    """
    execution = await describe(client, workflow_id, run_id)
    if execution is None or visible_to(caller, execution):
        return execution
    return None


def visible_to(caller: Caller, execution: WorkflowExecution) -> bool:
    """Whether ``caller`` may see ``execution``; a refusal is logged (who asked, for what)."""
    if caller.may_see(tenant_of(execution)):
        return True
    log.warning(
        "tenant %s was refused workflow %s of another tenant", caller.tenant, execution.id,
        extra={"tenant_id": caller.tenant, "workflow_id": execution.id},
    )  # fmt: skip
    return False


async def list_page(
    client: Client, query: str, page_size: int, page_token: str | None
) -> tuple[list[WorkflowExecution], str | None]:
    """One page of a visibility listing and the token of the next one."""
    token = decode_page_token(page_token) if page_token else None
    iterator = client.list_workflows(
        query or None, page_size=page_size, next_page_token=token, rpc_timeout=RPC_TIMEOUT
    )
    await call(iterator.fetch_next_page())
    items = list(iterator.current_page or ())
    next_token = iterator.next_page_token
    return items, encode_page_token(next_token) if next_token else None


def encode_page_token(token: bytes) -> str:
    """Temporal's next-page token as the API hands it out: versioned and checksummed."""
    framed = PAGE_TOKEN_VERSION + zlib.crc32(token).to_bytes(4, "big") + token
    return base64.urlsafe_b64encode(framed).decode()


def decode_page_token(text: str) -> bytes:
    """The Temporal token inside a ``page_token``; a 422 for anything the API did not issue.

    Temporal answers a token it cannot read with UNKNOWN, retried until the RPC
    times out: without the checksum a mistyped token would look like an outage.
    The checksum catches mistakes, it is no signature; a forged token still only
    pages through the caller's own (tenant-filtered) query.
    """
    try:
        raw = base64.b64decode(text.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Problem(422, "validation-error", "page_token is not a token we issued") from exc
    version, check, token = raw[:1], raw[1:5], raw[5:]
    if version != PAGE_TOKEN_VERSION or check != zlib.crc32(token).to_bytes(4, "big"):
        raise Problem(422, "validation-error", "page_token is not a token we issued")
    return token


async def wait_closed(client: Client, workflow_id: str, run_id: str | None, timeout: float) -> bool:
    """Wait until the execution closes; ``False`` if it is still running at the deadline."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        await asyncio.wait_for(handle.result(follow_runs=False), timeout)
    except TimeoutError:
        return False
    except (WorkflowFailureError, WorkflowContinuedAsNewError):
        return True
    except RPCError as exc:
        raise problem_of(exc) from exc
    return True
