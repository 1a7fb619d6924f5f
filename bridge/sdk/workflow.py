"""Workflow-side helpers: dedupe of bridge signals, progress, and publishing.

Everything here is deterministic and safe to call from workflow code.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from bridge.dedupe import EventDedupe
    from bridge.sdk.egress import PUBLISH_ACTIVITY, Published, PublishRequest

PROGRESS_QUERY = "ktb_progress"
PUBLISH_TIMEOUT = timedelta(seconds=10)
# Transient Kafka failures are retried until Kafka takes the event, with the same
# ce_id every time; an event Kafka never will take fails the activity non-retryably
# (bridge.egress), so no attempt cap is needed here.
PUBLISH_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))


class BridgeWorkflow:
    """Mixin for workflows driven by the bridge: dedupe, progress query, publishing."""

    def _ktb_setup(self, seen: Iterable[str] = ()) -> None:
        self.ktb_dedupe = EventDedupe(seen)
        self.ktb_status: dict[str, Any] = {"step": "started"}
        self.ktb_compensations: list[dict[str, Any]] = []

    def ktb_accept(self, message: dict[str, Any]) -> Any:
        """The payload of a bridge signal the first time its event id arrives, else ``None``."""
        if not hasattr(self, "ktb_dedupe"):
            self._ktb_setup()
        if not self.ktb_dedupe.first_time(message):
            workflow.logger.info("dropping repeated event %s", message.get("event_id"))
            return None
        return message.get("payload")

    def ktb_progress_set(self, step: str, **info: Any) -> None:
        """Record the current step for the ``ktb_progress`` query."""
        if not hasattr(self, "ktb_status"):
            self._ktb_setup()
        self.ktb_status = {"step": step, **info}

    def ktb_compensation_done(self, step: str, detail: str, status: str = "done") -> None:
        """Record one compensation (``done`` or ``failed``); ``ktb_progress`` lists them."""
        if not hasattr(self, "ktb_compensations"):
            self._ktb_setup()
        self.ktb_compensations.append({"step": step, "detail": detail, "status": status})

    @workflow.query(name=PROGRESS_QUERY)
    def ktb_progress(self) -> dict[str, Any]:
        """The standard progress query the API and ``ktb status`` read.

        ``step`` and the step's details, plus ``compensations`` (in the order they
        ran) once a saga has undone anything.
        """
        status = dict(getattr(self, "ktb_status", {"step": "started"}))
        compensations = getattr(self, "ktb_compensations", [])
        if compensations:
            status["compensations"] = [dict(c) for c in compensations]
        return status


def trigger() -> dict[str, Any]:
    """What the bridge recorded about the event that started this workflow (its memo)."""
    try:
        value: dict[str, Any] = workflow.memo_value("ktb", default={}, type_hint=dict)
    except KeyError:
        return {}
    return value


async def publish(
    topic: str,
    type: str,
    data: dict[str, Any],
    *,
    name: str,
    key: str | None = None,
    kind: str = "outcome",
    causation_id: str | None = None,
    subject: str | None = None,
    timeout: timedelta = PUBLISH_TIMEOUT,
) -> Published:
    """Publish an event from a workflow; causation, correlation, tenant and trace are filled in.

    ``causation_id`` defaults to the event that started the workflow; pass the id
    of a later event (a signal's) when that one caused this publication. The
    activity derives ``ce_id`` from the workflow, run and activity ids and ``name``,
    so ``name`` only needs to tell apart the events of one workflow.
    """
    origin = trigger()
    request = PublishRequest(
        topic=topic,
        type=type,
        data=data,
        name=name,
        key=key,
        kind=kind,
        causation_id=causation_id or origin.get("event_id"),
        correlation_id=workflow.info().workflow_id,
        tenant_id=origin.get("tenant_id"),
        traceparent=origin.get("traceparent"),
        subject=subject,
    )
    return await workflow.execute_activity(
        PUBLISH_ACTIVITY,
        request,
        start_to_close_timeout=timeout,
        retry_policy=PUBLISH_RETRY,
        result_type=Published,
    )
