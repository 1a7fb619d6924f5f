"""Sagas inside workflows: undo completed steps, in reverse, on failure or cancellation.

A workflow runs its steps through ``Saga.step``, registering after each one the
activity that undoes it. ``Saga.run`` runs the body; when the body fails (an
activity failure or an ``ApplicationError``), is aborted (``Saga.abort``, e.g.
from a cancellation signal) or the workflow is cancelled, the registered
compensations run in reverse order, each as an activity with retries, each
publishing one event to the compensation topic, and the saga publishes one final
outcome: ``completed``, ``compensated`` (something was undone) or ``failed``
(nothing needed undoing, or a compensation failed). A Temporal cancellation is
caught deliberately, the compensations run shielded from further cancellation,
and the cancellation is re-raised so the workflow still ends as cancelled.

A step still running when the saga is cancelled is allowed to finish first, so
its effect is known and compensated rather than guessed. Step actions should
therefore be bounded (activities with timeouts); waiting for events belongs
between steps, where cancellation interrupts it at once.

The events' data is the saga's ``data`` plus, by type: ``completed`` the body's
result; ``failed`` ``step`` and ``reason``; ``compensated`` ``step``,
``reason`` and ``compensated_steps``; the per-step compensation event ``step``
and ``detail`` (the compensation activity's result). Their schemas must have
these fields.

Publishing is retried for as long as Kafka fails transiently; an event Kafka will
never take (too large, a topic the worker may not write) fails its activity at
once (``bridge.egress``), and the saga still ends with an outcome:

- a step that publishes fails like any failing step: the saga unwinds;
- a compensation event that cannot be published does not stop the unwinding: the
  step was undone, so it counts as compensated, and the outcome's ``reason`` (and
  ``unpublished_compensations`` in the result) names the missing events;
- a ``completed`` outcome that cannot be published (the body's result makes it too
  large, say) turns into a ``failed`` outcome with ``step`` ``publish_outcome``
  and the reason; nothing is undone, as for a late cancellation, since every
  step is done;
- a final outcome that cannot be published either fails the workflow with a
  non-retryable ``OutcomeNotPublished`` error, after the compensations ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from bridge.sdk.egress import COMPENSATION, OUTCOME
    from bridge.sdk.faults import NEVER_RETRIED
    from bridge.sdk.workflow import BridgeWorkflow, publish

T = TypeVar("T")

COMPLETED = "completed"
FAILED = "failed"
COMPENSATED = "compensated"
PUBLISH_OUTCOME = "publish_outcome"
"""The ``step`` of a ``failed`` outcome published because ``completed`` could not be."""

# Compensations must eventually happen: retried until they succeed, unless the
# error says retrying cannot help.
COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=60),
    non_retryable_error_types=list(NEVER_RETRIED),
)


@dataclass(frozen=True)
class SagaEvents:
    """Where a saga publishes and the event types it publishes."""

    outcome_topic: str
    compensation_topic: str
    completed: str
    failed: str
    compensated: str
    step_compensated: str


@dataclass(frozen=True)
class Compensation:
    """The activity that undoes one step; a string result is the event's ``detail``."""

    activity: str
    args: Sequence[Any] = ()
    task_queue: str | None = None


@dataclass
class SagaOutcome:
    """How a saga ended and the outcome event it published."""

    status: str
    data: dict[str, Any]
    event_id: str
    step: str | None = None
    reason: str | None = None
    compensated: list[str] = field(default_factory=list)
    failed_compensations: list[str] = field(default_factory=list)
    unpublished_compensations: list[str] = field(default_factory=list)
    """Steps undone whose compensation event Kafka would not take."""

    def as_dict(self) -> dict[str, Any]:
        """A plain value to return from the workflow."""
        return {
            "status": self.status,
            **self.data,
            "outcome_event_id": self.event_id,
            "failed_compensations": list(self.failed_compensations),
            "unpublished_compensations": list(self.unpublished_compensations),
        }


@dataclass
class _Abort:
    reason: str
    cause: str | None


@dataclass
class _Pending:
    task: asyncio.Task[Any]
    compensate: Compensation | Callable[[Any], Compensation] | None


def describe_failure(exc: BaseException) -> str:
    """``Type: message`` of the innermost failure (the activity's own error)."""
    cause: BaseException | None = exc
    while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'ApplicationError'}: {cause.message}"
    if isinstance(cause, TemporalTimeoutError):
        return f"timed out ({cause.type.name if cause.type else 'unknown'})"
    if isinstance(cause, FailureError):
        return cause.message
    return str(cause)


class Saga:
    """Registered compensations of one workflow run; see the module docstring."""

    def __init__(
        self,
        events: SagaEvents,
        *,
        key: str | None,
        data: dict[str, Any],
        owner: BridgeWorkflow | None = None,
        retry_policy: RetryPolicy = COMPENSATION_RETRY,
        timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.events = events
        self.key = key
        self.data = dict(data)
        self.owner = owner
        self.retry_policy = retry_policy
        self.timeout = timeout
        self.current: str | None = None
        self._done: list[tuple[str, Compensation]] = []
        self._pending: dict[str, _Pending] = {}
        self._abort: _Abort | None = None
        self._body: asyncio.Task[Any] | None = None
        self._closing = False

    # --- inside the body ------------------------------------------------------------

    async def step(
        self,
        name: str,
        action: Callable[[], Awaitable[T]],
        compensate: Compensation | Callable[[T], Compensation] | None = None,
    ) -> T:
        """Run one step; on success register ``compensate`` (or ``compensate(result)``)."""
        self.current = name
        self._progress(name)
        task: asyncio.Task[T] = asyncio.ensure_future(action())
        self._pending[name] = _Pending(task, compensate)
        # Shielded: a cancellation reaches the body, not the step, which finishes
        # so that its effect is known when the saga unwinds.
        result = await asyncio.shield(task)
        del self._pending[name]
        self._register(name, compensate, result)
        return result

    def abort(self, reason: str, cause: str | None = None) -> None:
        """Stop the body and compensate (a cancellation request by event, say).

        ``cause`` is the id of the event that asked; the compensation and outcome
        events name it as their ``ce_causationid``. Ignored once the saga is ending.
        """
        if self._closing or self._abort is not None:
            return
        self._abort = _Abort(reason, cause)
        if self._body is not None and not self._body.done():
            self._body.cancel()

    # --- running ----------------------------------------------------------------------

    async def run(self, body: Callable[[], Awaitable[dict[str, Any]]]) -> SagaOutcome:
        """Run ``body``; publish ``completed`` with its result, or unwind and publish.

        A Temporal cancellation is re-raised after unwinding; a failure or an
        abort returns the outcome.
        """
        if self._abort is not None:
            return await self._shielded(self._unwind(self._abort.reason))
        self._body = asyncio.ensure_future(body())
        try:
            result = await self._body
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelled_here = task is not None and task.cancelling() > 0
            if cancelled_here or self._abort is None:
                await self._shielded(self._unwind("cancelled"))
                raise
            return await self._shielded(self._unwind(self._abort.reason))
        except FailureError as exc:
            return await self._shielded(self._unwind(describe_failure(exc)))
        # Every step is done: a late cancellation does not undo a finished process.
        return await self._shielded(self._complete(result), reraise=False)

    async def _complete(self, result: dict[str, Any]) -> SagaOutcome:
        self._closing = True
        data = {**self.data, **result}
        try:
            published = await self._publish(self.events.completed, data, "outcome")
        except ActivityError as exc:
            # Kafka will never take it (publishing retries transient errors forever).
            # Every step is done, so nothing is undone: the process is reported failed.
            reason = (
                "every step completed, but the completed outcome could not be published: "
                + describe_failure(exc)
            )
            workflow.logger.error("saga outcome not published: %s", reason)
            failed = {**self.data, "step": PUBLISH_OUTCOME, "reason": reason}
            published = await self._publish_outcome(FAILED, self.events.failed, failed)
            self._progress(
                FAILED, failed_step=PUBLISH_OUTCOME, reason=reason, outcome_event_id=published
            )
            return SagaOutcome(FAILED, failed, published, PUBLISH_OUTCOME, reason)
        self._progress(COMPLETED, outcome_event_id=published)
        return SagaOutcome(COMPLETED, data, published)

    async def _unwind(self, reason: str) -> SagaOutcome:
        self._closing = True
        step = self.current or "start"
        await self._settle_pending()
        compensated: list[str] = []
        failures: list[str] = []
        unpublished: list[str] = []
        for name, compensation in reversed(self._done):
            self._progress("compensating", compensating=name, reason=reason)
            try:
                result = await workflow.execute_activity(
                    compensation.activity,
                    args=list(compensation.args),
                    task_queue=compensation.task_queue,
                    start_to_close_timeout=self.timeout,
                    retry_policy=self.retry_policy,
                )
            except FailureError as exc:
                detail = describe_failure(exc)
                failures.append(name)
                if self.owner is not None:
                    self.owner.ktb_compensation_done(name, detail, "failed")
                workflow.logger.warning("compensation of %s failed: %s", name, detail)
                continue
            detail = result if isinstance(result, str) and result else f"{name} compensated"
            try:
                await self._publish(
                    self.events.step_compensated,
                    {**self.data, "step": name, "detail": detail},
                    name,
                    kind=COMPENSATION,
                    topic=self.events.compensation_topic,
                )
            except ActivityError as exc:
                # The step is undone all the same; the outcome names the missing event.
                unpublished.append(name)
                workflow.logger.error(
                    "compensation event of %s not published: %s", name, describe_failure(exc)
                )
                detail = f"{detail} (compensation event not published)"
            compensated.append(name)
            if self.owner is not None:
                self.owner.ktb_compensation_done(name, detail)
        if failures:
            reason = f"{reason}; compensation failed for {', '.join(failures)}"
        if unpublished:
            reason = f"{reason}; compensation event not published for {', '.join(unpublished)}"
        if failures:
            status = FAILED
            data = {**self.data, "step": step, "reason": reason}
            event_type = self.events.failed
        elif compensated:
            status = COMPENSATED
            data = {**self.data, "step": step, "reason": reason, "compensated_steps": compensated}
            event_type = self.events.compensated
        else:
            status = FAILED
            data = {**self.data, "step": step, "reason": reason}
            event_type = self.events.failed
        published = await self._publish_outcome(status, event_type, data)
        self._progress(status, failed_step=step, reason=reason, outcome_event_id=published)
        return SagaOutcome(
            status, data, published, step, reason, compensated, failures, unpublished
        )

    async def _publish_outcome(self, status: str, type: str, data: dict[str, Any]) -> str:
        """Publish the final outcome; if Kafka will never take it, fail the workflow saying so."""
        try:
            return await self._publish(type, data, "outcome")
        except ActivityError as exc:
            self._progress("outcome_not_published", status=status, reason=data.get("reason"))
            raise ApplicationError(
                f"the saga ended {status}, but its outcome could not be published: "
                + describe_failure(exc),
                type="OutcomeNotPublished",
                non_retryable=True,
            ) from exc

    async def _settle_pending(self) -> None:
        """Let steps still running finish; register compensations for those that succeeded."""
        for name, pending in list(self._pending.items()):
            try:
                result = await pending.task
            except (FailureError, asyncio.CancelledError):
                continue  # the step did not take effect: nothing to undo
            finally:
                del self._pending[name]
            self._register(name, pending.compensate, result)

    def _register(
        self,
        name: str,
        compensate: Compensation | Callable[[Any], Compensation] | None,
        result: Any,
    ) -> None:
        if compensate is None:
            return
        compensation = compensate if isinstance(compensate, Compensation) else compensate(result)
        self._done.append((name, compensation))

    async def _publish(
        self,
        type: str,
        data: dict[str, Any],
        name: str,
        *,
        kind: str = OUTCOME,
        topic: str | None = None,
    ) -> str:
        published = await publish(
            topic or self.events.outcome_topic,
            type,
            data,
            name=name,
            key=self.key,
            kind=kind,
            causation_id=self._abort.cause if self._abort else None,
        )
        return published.ce_id

    def _progress(self, step: str, **info: Any) -> None:
        if self.owner is not None:
            self.owner.ktb_progress_set(step, **info)

    @staticmethod
    async def _shielded(coro: Awaitable[T], *, reraise: bool = True) -> T:
        """Run ``coro`` to the end even if the caller is cancelled meanwhile.

        A cancellation that arrived meanwhile is raised afterwards (``reraise``)
        or dropped, when the work it would have interrupted is already finished.
        """
        task = asyncio.ensure_future(coro)
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True
                continue
            if cancelled and reraise:
                raise asyncio.CancelledError
            return result
