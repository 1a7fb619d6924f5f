"""Small workflows the taxonomy and egress tests drive."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from bridge.sdk.faults import retry_policy
    from bridge.sdk.workflow import publish

FAIL_ACTIVITY = "ktb_test.fail_with"


@workflow.defn(name="KtbTestFaultProbe")
class FaultProbe:
    """Runs an activity that always raises the named fault; reports how it ended."""

    @workflow.run
    async def run(self, fault: str, scale: float) -> dict[str, Any]:
        """Return the final failure's type and whether it was marked non-retryable."""
        try:
            await workflow.execute_activity(
                FAIL_ACTIVITY,
                fault,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=retry_policy(scale),
            )
        except ActivityError as exc:
            cause = exc.cause
            assert isinstance(cause, ApplicationError)
            return {"type": cause.type, "non_retryable": cause.non_retryable}
        return {"type": None, "non_retryable": False}


@workflow.defn(name="KtbTestPublisher")
class Publisher:
    """Publishes one event with the data it is given; returns the ``ce_id``."""

    @workflow.run
    async def run(self, topic: str, type: str, data: dict[str, Any]) -> str:
        """Publish and return the event id."""
        published = await publish(topic, type, data, name="probe", key="k-1")
        return published.ce_id
