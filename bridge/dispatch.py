"""Executing an ``Action`` against Temporal, idempotently.

Starts use deterministic workflow ids with ``USE_EXISTING`` (running) and
``REJECT_DUPLICATE`` (closed), so a repeated event is reported as a duplicate
and changes nothing. Server errors are classified once here: transient ones
(unavailable, deadline, resource exhausted) raise ``TransientError`` so the
consumer retries; anything that rejects the action itself raises
``ActionRejectedError`` so the record is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from temporalio.api.errordetails.v1 import NamespaceNotFoundFailure
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from bridge import attributes
from bridge.envelope import Event
from bridge.errors import ActionRejectedError, TransientError
from bridge.routes import Action, ActionKind


class Outcome(StrEnum):
    """What happened to one event; the ``result`` label of ``ktb_events_routed_total``."""

    STARTED = "started"
    DUPLICATE = "duplicate"
    SIGNALLED = "signalled"
    UPDATED = "updated"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one event plus the workflow it touched."""

    outcome: Outcome
    route: str | None = None
    action: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    detail: str | None = None


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

_REUSE = {
    "reject_duplicate": WorkflowIDReusePolicy.REJECT_DUPLICATE,
    "allow_duplicate_failed_only": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    "allow_duplicate": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
}
_CONFLICT = {
    "use_existing": WorkflowIDConflictPolicy.USE_EXISTING,
    "fail": WorkflowIDConflictPolicy.FAIL,
}


def event_memo(event: Event, route: str) -> dict[str, Any]:
    """Where the triggering event came from; workflows and the API read it back."""
    return {
        "event_id": event.id,
        "event_type": event.type,
        "tenant_id": event.tenant_id,
        "traceparent": event.traceparent,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
        "route": route,
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


def classify(exc: RPCError, action: Action) -> Exception:
    """Map a Temporal RPC error onto the bridge's transient/permanent split."""
    if exc.status in TRANSIENT_CODES or _namespace_missing(exc):
        return TransientError(
            f"Temporal unavailable for {action.kind.value} {action.workflow_id}: {exc.message}",
            event_id=action.event_id,
        )
    return ActionRejectedError(
        f"Temporal rejected {action.kind.value} of {action.workflow_id} "
        f"({exc.status.name if exc.status else 'error'}): {exc.message}",
        event_id=action.event_id,
    )


def _namespace_missing(exc: RPCError) -> bool:
    """NOT_FOUND for the namespace, not the workflow.

    The namespace comes from configuration, so its absence is the deployment's
    problem (or a server still starting, or a namespace cache refresh): pause and
    retry, never dead-letter the event.
    """
    if exc.status is not RPCStatusCode.NOT_FOUND:
        return False
    details = exc.grpc_status.details
    return bool(details) and details[0].Is(NamespaceNotFoundFailure.DESCRIPTOR)


class Dispatcher:
    """Carries out actions; one per process, shared by live, replay and HTTP paths."""

    def __init__(self, client: Client, rpc_timeout: timedelta = timedelta(seconds=10)) -> None:
        self.client = client
        self.rpc_timeout = rpc_timeout

    async def execute(self, action: Action, event: Event) -> Result:
        """Perform ``action``; return what happened or raise a bridge error."""
        try:
            match action.kind:
                case ActionKind.START | ActionKind.SIGNAL_WITH_START:
                    return await self._start(action, event)
                case ActionKind.UPDATE_WITH_START:
                    return await self._update_with_start(action, event)
                case ActionKind.SIGNAL:
                    handle = self.client.get_workflow_handle(action.workflow_id)
                    await handle.signal(
                        action.signal or "", *action.message, rpc_timeout=self.rpc_timeout
                    )
                    return self._result(Outcome.SIGNALLED, action)
                case ActionKind.CANCEL:
                    return await self._close(action, cancel=True)
                case ActionKind.TERMINATE:
                    return await self._close(action, cancel=False)
        except RPCError as exc:
            raise classify(exc, action) from exc
        raise ActionRejectedError(f"unknown action {action.kind}")  # pragma: no cover

    @staticmethod
    def _result(
        outcome: Outcome, action: Action, run_id: str | None = None, detail: str | None = None
    ) -> Result:
        return Result(outcome, action.route, action.kind.value, action.workflow_id, run_id, detail)

    def _start_kwargs(self, action: Action, event: Event) -> dict[str, Any]:
        return {
            "id": action.workflow_id,
            "task_queue": action.task_queue or "",
            "id_reuse_policy": _REUSE[action.id_reuse_policy],
            "search_attributes": search_attributes(event, action),
            "memo": {"ktb": event_memo(event, action.route), **action.memo},
        }

    async def _start(self, action: Action, event: Event) -> Result:
        kwargs = self._start_kwargs(action, event)
        if action.kind is ActionKind.SIGNAL_WITH_START:
            kwargs["start_signal"] = action.signal
            kwargs["start_signal_args"] = list(action.message)
        try:
            handle: WorkflowHandle[Any, Any] = await self.client.start_workflow(
                action.workflow_type or "",
                args=list(action.args),
                id_conflict_policy=_CONFLICT[action.id_conflict_policy],
                rpc_timeout=self.rpc_timeout,
                **kwargs,
            )
        except WorkflowAlreadyStartedError as exc:
            return self._duplicate(action, exc.run_id, "already closed")
        response = handle._start_workflow_response
        started = getattr(response, "started", True)
        if action.kind is ActionKind.SIGNAL_WITH_START:
            return self._result(
                Outcome.STARTED if started else Outcome.SIGNALLED, action, handle.result_run_id
            )
        if not started:
            return self._duplicate(action, handle.result_run_id, "already running")
        return self._result(Outcome.STARTED, action, handle.result_run_id)

    def _duplicate(self, action: Action, run_id: str | None, detail: str) -> Result:
        if action.on_duplicate == "dead_letter":
            raise ActionRejectedError(
                f"workflow {action.workflow_id} {detail}", event_id=action.event_id
            )
        return self._result(Outcome.DUPLICATE, action, run_id, detail)

    async def _update_with_start(self, action: Action, event: Event) -> Result:
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            action.workflow_type or "",
            *action.args,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            **self._start_kwargs(action, event),
        )
        try:
            update = await self.client.start_update_with_start_workflow(
                action.update or "",
                *action.message,
                id=action.event_id,
                start_workflow_operation=start,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                rpc_timeout=self.rpc_timeout,
            )
        except WorkflowAlreadyStartedError as exc:
            return self._duplicate(action, exc.run_id, "already closed")
        handle = await start.workflow_handle()
        return self._result(Outcome.UPDATED, action, handle.result_run_id, update.id)

    async def _close(self, action: Action, *, cancel: bool) -> Result:
        handle = self.client.get_workflow_handle(action.workflow_id)
        try:
            if cancel:
                await handle.cancel(rpc_timeout=self.rpc_timeout)
            else:
                await handle.terminate(reason=action.reason, rpc_timeout=self.rpc_timeout)
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND and await self._exists(action.workflow_id):
                # Already closed: the effect the event asks for is already there.
                return self._duplicate(action, None, "already closed")
            raise
        return self._result(Outcome.CANCELLED if cancel else Outcome.TERMINATED, action)

    async def _exists(self, workflow_id: str) -> bool:
        try:
            await self.client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=self.rpc_timeout
            )
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True


def describe_result(result: Result) -> Mapping[str, Any]:
    """A result as a plain mapping (logs, replay reports, the API)."""
    return {
        "outcome": result.outcome.value,
        "route": result.route,
        "action": result.action,
        "workflow_id": result.workflow_id,
        "run_id": result.run_id,
        "detail": result.detail,
    }
