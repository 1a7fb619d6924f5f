"""Actions as Temporal requests, and Temporal's errors as the bridge's.

What a start carries (memo, search attributes, id policies), how server errors split
into transient and permanent, and the few facts about a request or an update's
answer the dispatcher needs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.api.errordetails.v1 import NamespaceNotFoundFailure, ResourceExhaustedFailure
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateHandle
from temporalio.common import (
    Priority,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from bridge.envelope import Event
from bridge.errors import ActionRejectedError, TransientError
from bridge.routes import Action, ActionKind
from bridge.temporal import attributes

TRANSIENT_CODES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
        # Credentials or permissions are a deployment problem, not the record's:
        # pause and retry rather than dead-letter every event.
        RPCStatusCode.UNAUTHENTICATED,
        RPCStatusCode.PERMISSION_DENIED,
    }
)

REUSE_POLICIES = {
    "reject_duplicate": WorkflowIDReusePolicy.REJECT_DUPLICATE,
    "allow_duplicate_failed_only": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    "allow_duplicate": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
}
CONFLICT_POLICIES = {
    "use_existing": WorkflowIDConflictPolicy.USE_EXISTING,
    "fail": WorkflowIDConflictPolicy.FAIL,
}


def event_memo(event: Event, action: Action, outcome: str) -> dict[str, Any]:
    """Where the triggering event came from and what the bridge did with it: the route,
    its action and ``outcome``, the event's outcome when this call starts the workflow.
    Workflows and the API read it back (``GET /events/{id}`` before or without provenance).
    """
    return {
        "event_id": event.id,
        "event_type": event.type,
        "tenant_id": event.tenant_id,
        "traceparent": event.traceparent,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
        "route": action.route,
        "action": action.kind.value,
        "outcome": outcome,
    }


def search_attributes(event: Event, action: Action) -> TypedSearchAttributes:
    """The bridge's search attributes plus the route's own (as keywords)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(attributes.EVENT_ID, event.id),
        SearchAttributePair(attributes.EVENT_TYPE, event.type),
        SearchAttributePair(attributes.ROUTE, action.route),
    ]
    if event.tenant_id:
        pairs.append(SearchAttributePair(attributes.TENANT_ID, event.tenant_id))
    if event.key:
        pairs.append(SearchAttributePair(attributes.BUSINESS_KEY, event.key))
    pairs += [
        SearchAttributePair(SearchAttributeKey.for_keyword(k), v)
        for k, v in action.search_attributes.items()
    ]
    return TypedSearchAttributes(pairs)


def start_options(action: Action, event: Event, outcome: str) -> dict[str, Any]:
    """What a start of ``action``'s workflow carries whichever call sends it (a start, a
    signal- or update-with-start): its id, task queue, id reuse policy, search
    attributes, memo and schedule; a window's collector takes its search attributes and
    memo. ``outcome``: the event's when the call starts the workflow (``event_memo``)."""
    return {
        "id": action.workflow_id,
        "task_queue": action.task_queue or "",
        "id_reuse_policy": REUSE_POLICIES[action.id_reuse_policy],
        "search_attributes": search_attributes(event, action),
        "memo": {"ktb": event_memo(event, action, outcome), **action.memo},
        **schedule_options(action),
    }


def start_call(action: Action, event: Event, outcome: str) -> dict[str, Any]:
    """``Client.start_workflow``'s arguments, by name, for a start or signal-with-start
    ``action``: the workflow type (``workflow``), its arguments, the id conflict policy,
    the start signal of a signal-with-start and ``start_options``."""
    call = {
        "workflow": action.workflow_type or "",
        "args": list(action.args),
        "id_conflict_policy": CONFLICT_POLICIES[action.id_conflict_policy],
        **start_options(action, event, outcome),
    }
    if action.kind is ActionKind.SIGNAL_WITH_START:
        call["start_signal"] = action.signal
        call["start_signal_args"] = list(action.message)
    return call


def schedule_options(action: Action, now: datetime | None = None) -> dict[str, Any]:
    """The priority and start delay a starting action sends (none of them by default).

    A start delay given as a time is what is left of it ``now`` (default: the clock's
    now), when the start is sent: a record that waited (for a rate limit, a retry)
    does not start later than asked.
    """
    schedule = action.schedule
    if schedule is None:
        return {}
    options: dict[str, Any] = {}
    if (
        schedule.priority is not None
        or schedule.fairness_key is not None
        or schedule.fairness_weight is not None
    ):
        options["priority"] = Priority(
            priority_key=schedule.priority,
            fairness_key=schedule.fairness_key,
            fairness_weight=schedule.fairness_weight,
        )
    if schedule.start_delay is not None:
        options["start_delay"] = schedule.start_delay.from_now(now or datetime.now(UTC))
    return options


def classify(exc: RPCError, action: Action) -> Exception:
    """Map a Temporal RPC error onto the bridge's transient/permanent split."""
    if exc.status in TRANSIENT_CODES or namespace_missing(exc):
        return TransientError(
            f"Temporal unavailable for {action.kind.value} {action.workflow_id}: {exc.message}",
            event_id=action.event_id,
        )
    return ActionRejectedError(
        f"Temporal rejected {action.kind.value} of {action.workflow_id} "
        f"({exc.status.name if exc.status else 'error'}): {exc.message}",
        event_id=action.event_id,
    )


OVERLOAD_CODES = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}
)
"""What Temporal answers when it cannot take more calls (or none at all) right now."""


def overloaded(exc: BaseException | None) -> bool:
    """Whether ``exc`` is Temporal refusing a call for load or unavailability, as
    opposed to a transient error of one call (cancelled, internal, permissions)."""
    return isinstance(exc, RPCError) and exc.status in OVERLOAD_CODES


def namespace_missing(exc: RPCError) -> bool:
    """NOT_FOUND for the namespace, not the workflow.

    The namespace comes from configuration, so its absence is the deployment's
    problem (or a server still starting, or a namespace cache refresh): pause and
    retry, never dead-letter the event.
    """
    if exc.status is not RPCStatusCode.NOT_FOUND:
        return False
    details = exc.grpc_status.details
    return bool(details) and details[0].Is(NamespaceNotFoundFailure.DESCRIPTOR)


GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default limit on one message, which Temporal's frontend keeps."""


async def payload_bytes(client: Client, action: Action) -> int:
    """Bytes of the arguments and message the action sends, as the client encodes them."""
    values = [*action.args, *action.message, *action.memo.values()]
    if not values:
        return 0
    payloads = await client.data_converter.encode(values)
    return sum(p.ByteSize() for p in payloads)


def update_rejected(update: WorkflowUpdateHandle[Any]) -> bool:
    """Whether a started update came back already completed with a failure (rejected).

    The SDK keeps the outcome it received with the start; reading it makes no call.
    """
    outcome = getattr(update, "_known_outcome", None)
    return outcome is not None and outcome.HasField("failure")


def failure_message(exc: WorkflowUpdateFailedError) -> str:
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause) or type(cause).__name__


def throttled(exc: RPCError) -> bool:
    """RESOURCE_EXHAUSTED from Temporal's limits carries a ``ResourceExhaustedFailure``."""
    details = exc.grpc_status.details
    return any(d.Is(ResourceExhaustedFailure.DESCRIPTOR) for d in details)
