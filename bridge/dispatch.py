"""Executing an ``Action`` against Temporal, idempotently.

Starts use deterministic workflow ids with ``USE_EXISTING`` (running) and
``REJECT_DUPLICATE`` (closed), so a repeated event is reported as a duplicate
and changes nothing. Server errors are classified once here: transient ones
(unavailable, deadline, resource exhausted) raise ``TransientError`` so the
consumer retries; anything that rejects the action itself raises
``ActionRejectedError`` so the record is dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Protocol

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from bridge.concurrency import ActionLimit
from bridge.envelope import Event
from bridge.errors import (
    ActionRejectedError,
    PayloadTooLargeError,
    PermanentError,
    TransientError,
    UpdateRejectedError,
    WorkflowClosedError,
)
from bridge.flow import (
    WINDOW_SIGNAL,
    WINDOW_WORKFLOW,
    WindowPolicy,
    WindowState,
    collector_id,
    window_event,
)
from bridge.observability.metrics import Metrics
from bridge.routes import Action, ActionKind
from bridge.temporal import attributes
from bridge.temporal.history import received
from bridge.temporal.requests import (
    GRPC_MAX_MESSAGE_BYTES,
    classify,
    failure_message,
    namespace_missing,
    overloaded,
    payload_bytes,
    start_call,
    start_options,
    throttled,
    update_rejected,
)
from bridge.tenancy import check_owner


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
    PARKED = "parked"
    """Held in ``<topic>.parked`` behind a dead letter of its key (``on_failure: park_key``)."""
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


class Executor(Protocol):
    """What an ``Ingress`` hands each routed action to: a ``Dispatcher``, ``DryRun``, or
    a wrapper around one (replay's fresh ids)."""

    async def execute(
        self, action: Action, event: Event, closed: asyncio.Event | None = None
    ) -> Result:
        """Carry out (or describe) ``action`` for ``event``; ``Abandoned`` if ``closed``
        (the record's partition closing) is set while the action waits for Temporal."""
        ...


class DryRun:
    """Acts on nothing: each action answers ``dry_run`` with the workflow it would reach."""

    async def execute(
        self, action: Action, event: Event, closed: asyncio.Event | None = None
    ) -> Result:
        """The result ``action`` would have, without touching Temporal."""
        return Result(Outcome.DRY_RUN, action.route, action.kind.value, action.workflow_id)


class Dispatcher:
    """Carries out actions; one per process, shared by live, replay and HTTP paths.

    Every workflow an action reaches is checked against the event's tenant before
    anything changes: signals, cancels and terminates act on one run only, which they
    describe first (or which was checked for the same tenant before, ``runs``);
    starting actions check the run they would signal, update or find as a duplicate.
    A workflow of another tenant is a ``TenantMismatchError``.
    """

    def __init__(
        self,
        client: Client,
        rpc_timeout: timedelta = timedelta(seconds=10),
        limit: ActionLimit | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.rpc_timeout = rpc_timeout
        self.limit = limit or ActionLimit()
        """How many actions are in Temporal at once (``bridge.concurrency``)."""
        self.metrics = metrics
        """Where Temporal's answer times go (``ktb_temporal_call_seconds``), if anywhere."""
        self.runs = CheckedRuns()
        """Running runs already checked against a tenant (signals and closes are pinned)."""

    async def execute(
        self, action: Action, event: Event, closed: asyncio.Event | None = None
    ) -> Result:
        """Perform ``action`` in a slot of ``limit``; return what happened or raise a
        bridge error. Temporal's answer time feeds the limit (an update's, to the
        accepted stage, includes its worker's); a call refused for overload lowers it.
        ``Abandoned`` if ``closed`` is set before the action has its slot."""
        async with self.limit.slot(closed):
            started = time.monotonic()
            try:
                result = await self._perform(action, event)
            except TransientError as exc:
                if overloaded(exc.__cause__):
                    self.limit.failed()
                raise
            except PermanentError:
                self._answered(action, time.monotonic() - started)
                raise
            self._answered(action, time.monotonic() - started)
            return result

    def _answered(self, action: Action, seconds: float) -> None:
        """Temporal answered ``action`` in ``seconds``: a sample for the limit and for
        ``ktb_temporal_call_seconds``."""
        self.limit.observe(seconds)
        if self.metrics is not None:
            self.metrics.temporal_call.labels(action.kind.value).observe(seconds)

    async def _perform(self, action: Action, event: Event) -> Result:
        try:
            if action.window is not None:
                return await self._collect(action, event, action.window)
            match action.kind:
                case ActionKind.START:
                    return await self._start(action, event)
                case ActionKind.SIGNAL_WITH_START:
                    await self._target(action, event)
                    return await self._start(action, event)
                case ActionKind.UPDATE_WITH_START:
                    await self._target(action, event)
                    return await self._update_with_start(action, event)
                case ActionKind.SIGNAL:
                    return await self._signal(action, event)
                case ActionKind.CANCEL:
                    return await self._close(action, event, cancel=True)
                case ActionKind.TERMINATE:
                    return await self._close(action, event, cancel=False)
        except RPCError as exc:
            raise await self._classify(exc, action) from exc
        raise ActionRejectedError(f"unknown action {action.kind}")  # pragma: no cover

    @staticmethod
    def _result(
        outcome: Outcome, action: Action, run_id: str | None = None, detail: str | None = None
    ) -> Result:
        return Result(outcome, action.route, action.kind.value, action.workflow_id, run_id, detail)

    # --- the target and its tenant ---------------------------------------------------

    async def _describe(
        self, workflow_id: str, run_id: str | None = None
    ) -> WorkflowExecutionDescription | None:
        """The run (latest by default) of ``workflow_id``; ``None`` if there is none."""
        try:
            return await self.client.get_workflow_handle(workflow_id, run_id=run_id).describe(
                rpc_timeout=self.rpc_timeout
            )
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND and not namespace_missing(exc):
                return None
            raise

    async def _target(
        self, action: Action, event: Event, run_id: str | None = None
    ) -> WorkflowExecutionDescription | None:
        """The run an action reaches, checked against the event's tenant; ``None`` if none."""
        target = await self._describe(action.workflow_id, run_id)
        if target is not None:
            check_tenant(target, action, event)
        return target

    # --- starts ----------------------------------------------------------------------

    async def _start(self, action: Action, event: Event) -> Result:
        try:
            handle: WorkflowHandle[Any, Any] = await self.client.start_workflow(
                **start_call(action, event, Outcome.STARTED.value), rpc_timeout=self.rpc_timeout
            )
        except WorkflowAlreadyStartedError as exc:
            # Closed (or running under id_conflict_policy fail): check whose it is first.
            target = await self._target(action, event, exc.run_id)
            if action.kind is ActionKind.SIGNAL_WITH_START and target is not None:
                return await self._closed(action, target)
            return self._duplicate(action, exc.run_id, "already closed")
        response = handle._start_workflow_response
        started = getattr(response, "started", True)
        if started:
            return self._result(Outcome.STARTED, action, handle.result_run_id)
        if action.kind is ActionKind.SIGNAL_WITH_START:
            # Checked before the call; the id is the event tenant's own unless a route
            # opted out of tenant-scoped ids (see README, Security).
            return self._result(Outcome.SIGNALLED, action, handle.result_run_id)
        await self._target(action, event, handle.result_run_id)
        return self._duplicate(action, handle.result_run_id, "already running")

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
            **start_options(action, event, Outcome.UPDATED.value),
        )
        try:
            # The SDK asks again while the update is only admitted (no worker has taken
            # it): bound the whole wait, and count running out of it as transient.
            async with asyncio.timeout(self.rpc_timeout.total_seconds()):
                update = await self.client.start_update_with_start_workflow(
                    action.update or "",
                    *action.message,
                    id=action.event_id,
                    start_workflow_operation=start,
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                    rpc_timeout=self.rpc_timeout,
                )
        except WorkflowAlreadyStartedError as exc:
            target = await self._target(action, event, exc.run_id)
            if target is None:
                return self._duplicate(action, exc.run_id, "already closed")
            return await self._closed(action, target)
        except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as exc:
            _reraise_cancellation(exc)
            raise TransientError(
                f"update {action.update} of {action.workflow_id} was not accepted within "
                f"{self.rpc_timeout.total_seconds():.0f}s (Temporal slow, or no worker "
                "polling the task queue)",
                event_id=action.event_id,
            ) from exc
        handle = await start.workflow_handle()
        # A rejected update comes back completed with a failure, without raising.
        if update_rejected(update):
            try:
                await update.result()
            except WorkflowUpdateFailedError as exc:
                raise UpdateRejectedError(
                    f"update {action.update} of {action.workflow_id} rejected: "
                    f"{failure_message(exc)}",
                    event_id=action.event_id,
                ) from exc
        return self._result(Outcome.UPDATED, action, handle.result_run_id, update.id)

    # --- windows (debounce, batch) ---------------------------------------------------

    async def _collect(self, action: Action, event: Event, policy: WindowPolicy) -> Result:
        """Send the event into the window of its workflow id: signal-with-start its collector.

        Returned, the signal is in the collector's history: the event is in its window
        and the offset may be committed. The target run the window will start is
        checked against the event's tenant first; the collector needs no check, its
        id is scoped by the event's tenant whatever the route says (``collector_id``).
        """
        await self._target(action, event)
        kwargs = start_options(action, event, Outcome.SIGNALLED.value)
        attributes = {pair.key.name: str(pair.value) for pair in kwargs["search_attributes"]}
        item = window_event(action, event, policy, kwargs["memo"], attributes)
        collector = collector_id(event.tenant_id, action.workflow_id)
        await self.client.start_workflow(
            WINDOW_WORKFLOW,
            WindowState(dedupe_for_s=policy.dedupe_for_s),
            id=collector,
            task_queue=action.task_queue or "",
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=kwargs["search_attributes"],
            memo=kwargs["memo"],
            start_signal=WINDOW_SIGNAL,
            start_signal_args=[item],
            rpc_timeout=self.rpc_timeout,
        )
        return self._result(Outcome.SIGNALLED, action, None, f"in window {collector}")

    # --- signals, cancels, terminates --------------------------------------------------

    async def _pinned_run(
        self, action: Action, event: Event, *, fresh: bool
    ) -> tuple[str, None] | tuple[None, WorkflowExecutionDescription]:
        """The running run a signal, cancel or terminate acts on, checked against the event's
        tenant: ``(run id, None)``; or ``(None, the latest run)`` when that run is closed.

        Unless ``fresh``, a run already checked for this tenant comes from ``runs``: a
        run's tenant never changes and the action is pinned to it, so a run that has
        closed since answers NOT_FOUND and is looked up afresh.
        """
        if not fresh:
            known = self.runs.get(action.workflow_id)
            if known is not None and known[1] == event.tenant_id:
                return known[0], None
        target = await self._target(action, event)
        if target is None:
            raise ActionRejectedError(
                f"no workflow {action.workflow_id} to {action.kind.value}",
                event_id=action.event_id,
            )
        if target.status is not WorkflowExecutionStatus.RUNNING:
            self.runs.forget(action.workflow_id)
            return None, target
        self.runs.put(action.workflow_id, target.run_id, event.tenant_id)
        return target.run_id, None

    async def _signal(self, action: Action, event: Event) -> Result:
        for attempt in range(SIGNAL_ATTEMPTS):
            run_id, closed = await self._pinned_run(action, event, fresh=attempt > 0)
            if closed is not None:
                return await self._closed(action, closed)
            handle = self.client.get_workflow_handle(action.workflow_id, run_id=run_id)
            try:
                await handle.signal(
                    action.signal or "", *action.message, rpc_timeout=self.rpc_timeout
                )
            except RPCError as exc:
                if exc.status is not RPCStatusCode.NOT_FOUND or namespace_missing(exc):
                    raise
                self.runs.forget(action.workflow_id)
                continue  # the run closed or continued as new since: look again
            return self._result(Outcome.SIGNALLED, action, run_id)
        raise TransientError(
            f"workflow {action.workflow_id} kept changing runs while being signalled",
            event_id=action.event_id,
        )

    async def _close(self, action: Action, event: Event, *, cancel: bool) -> Result:
        for fresh in (False, True):
            run_id, closed = await self._pinned_run(action, event, fresh=fresh)
            if closed is not None:
                # Already closed: the effect the event asks for is already there.
                return self._duplicate(action, closed.run_id, "already closed")
            handle = self.client.get_workflow_handle(action.workflow_id, run_id=run_id)
            try:
                if cancel:
                    await handle.cancel(rpc_timeout=self.rpc_timeout)
                else:
                    await handle.terminate(reason=action.reason, rpc_timeout=self.rpc_timeout)
            except RPCError as exc:
                if exc.status is not RPCStatusCode.NOT_FOUND or namespace_missing(exc):
                    raise
                self.runs.forget(action.workflow_id)
                continue  # closed since it was checked: look again
            outcome = Outcome.CANCELLED if cancel else Outcome.TERMINATED
            return self._result(outcome, action, run_id)
        return self._duplicate(action, None, "already closed")

    # --- closed workflows ----------------------------------------------------------------

    async def _closed(self, action: Action, target: WorkflowExecutionDescription) -> Result:
        """A signal or update for a closed workflow: a duplicate if the workflow had
        received this event, else ``WorkflowClosedError``."""
        if await received(self.client, action, target, self.rpc_timeout):
            return self._duplicate(action, target.run_id, "already received")
        status = target.status.name.lower() if target.status else "closed"
        raise WorkflowClosedError(
            f"workflow {action.workflow_id} is {status}; it never received event {action.event_id}",
            event_id=action.event_id,
        )

    # --- errors ------------------------------------------------------------------------

    async def _classify(self, exc: RPCError, action: Action) -> Exception:
        if exc.status is RPCStatusCode.RESOURCE_EXHAUSTED and not throttled(exc):
            # Not Temporal's own limits (those say why): gRPC refuses messages over its
            # size limit with the same code. Such a request fails the same way every time.
            size = await payload_bytes(self.client, action)
            if size > GRPC_MAX_MESSAGE_BYTES:
                return PayloadTooLargeError(
                    f"{action.kind.value} of {action.workflow_id} carries {size:,} bytes of "
                    f"payloads, over the {GRPC_MAX_MESSAGE_BYTES:,}-byte gRPC message limit",
                    event_id=action.event_id,
                )
        return classify(exc, action)


class CheckedRuns:
    """Workflow id -> (run id, tenant) of runs seen running, the newest ``limit`` kept."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._runs: OrderedDict[str, tuple[str, str | None]] = OrderedDict()

    def get(self, workflow_id: str) -> tuple[str, str | None] | None:
        """The run last seen running under ``workflow_id`` and its tenant."""
        return self._runs.get(workflow_id)

    def put(self, workflow_id: str, run_id: str, tenant: str | None) -> None:
        """Remember a running run and its tenant."""
        self._runs[workflow_id] = (run_id, tenant)
        self._runs.move_to_end(workflow_id)
        if len(self._runs) > self.limit:
            self._runs.popitem(last=False)

    def forget(self, workflow_id: str) -> None:
        """Drop a run that has closed."""
        self._runs.pop(workflow_id, None)


SIGNAL_ATTEMPTS = 5
"""Runs a signal follows when the workflow continues as new under it."""


def check_tenant(target: WorkflowExecution, action: Action, event: Event) -> None:
    """``TenantMismatchError`` unless the workflow's ``KtbTenantId`` is the event's tenant."""
    check_owner(
        target.typed_search_attributes.get(attributes.TENANT_ID),
        event.tenant_id,
        workflow_id=action.workflow_id,
        event_id=action.event_id,
    )


def _reraise_cancellation(exc: BaseException) -> None:
    """temporalio turns a task's cancellation during an update into an error of its own;
    when this task is being cancelled, cancellation is what must go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


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
