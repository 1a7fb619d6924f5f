"""Events Kafka will never take: the publish activity fails at once, the saga still ends.

Real Kafka, real Temporal. The publisher's producer gets a small
``max_request_size``, so an event is "too large" at a few KiB: the same
``MessageSizeTooLargeError`` a 2 MiB outcome meets with the default limit.
Before the fix, such a publication was retried forever: the checks below stop
waiting as soon as a publish activity is on its second attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.worker import Worker

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.sdk.egress import PUBLISH_ACTIVITY, Published, Publisher, PublishRequest
from bridge.sdk.faults import ValidationError
from bridge.settings import Settings
from services.inventory import RELEASE, RESERVE
from services.payments import CHARGE, REFUND, RefundRequest
from services.shipping import CREATE_SHIPMENT, Shipment, ShipmentRequest
from tests.integration.saga_workflows import Publisher as PublisherWorkflow
from tests.integration.test_saga import (
    COMPENSATED,
    FAILED,
    STEP_COMPENSATED,
    Rig,
    Stubs,
    rig,
)
from tests.support import Services, eventually, order_data

PUBLISH_OUTCOME = "publish_outcome"
"""The ``step`` of the ``failed`` outcome that replaces a ``completed`` one Kafka refused."""
LIMIT = 16 * 1024
"""The publisher's ``max_request_size`` in these tests."""
BIG = "x" * (2 * LIMIT)


async def settled(handle: WorkflowHandle[Any, Any], timeout: float = 90.0) -> None:
    """Wait until the workflow closes; fail as soon as a publication is being retried."""
    retried: list[str] = []

    async def closed_or_retrying() -> bool:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.activity_type.name == PUBLISH_ACTIVITY and pending.attempt > 1:
                retried.append(f"attempt {pending.attempt}: {pending.last_failure.message}")
        return bool(retried) or description.status is not WorkflowExecutionStatus.RUNNING

    await eventually(closed_or_retrying, timeout)
    assert not retried, f"publishing is being retried ({retried[0]})"


async def test_an_event_over_the_size_limit_fails_its_activity_at_once(
    settings: Settings, catalog: SchemaCatalog, client, topics, uid
):
    producer = kafka.producer(settings, max_request_size=LIMIT)
    await producer.start()
    publisher = Publisher(producer, catalog, "tests")
    attempts: list[int] = []

    @activity.defn(name=PUBLISH_ACTIVITY)
    async def publish(req: PublishRequest) -> Published:
        attempts.append(activity.info().attempt)
        return await publisher.publish(req)

    task_queue = f"publish-big-{uid}"
    data = {"order_id": "o-1", "step": "charge_payment", "reason": BIG}
    try:
        async with Worker(
            client, task_queue=task_queue, workflows=[PublisherWorkflow], activities=[publish]
        ):
            handle = await client.start_workflow(
                PublisherWorkflow.run,
                args=[topics["outcomes"], "com.example.order.failed", data],
                id=f"publish-big-{uid}",
                task_queue=task_queue,
            )
            await settled(handle)
            try:
                await handle.result()
            except WorkflowFailureError as exc:
                failure = exc.cause
            else:
                raise AssertionError("publishing an oversized event succeeded")
    finally:
        await producer.stop()
    assert attempts == [1]
    assert isinstance(failure, ActivityError)
    assert failure.retry_state is RetryState.NON_RETRYABLE_FAILURE
    cause = failure.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    assert cause.type == "MessageSizeTooLargeError"
    assert topics["outcomes"] in cause.message
    assert "more than Kafka accepts" in cause.message
    [details] = cause.details
    assert details["size_bytes"] > 2 * LIMIT
    assert f"the record is {details['size_bytes']} bytes" in cause.message
    assert details["topic"] == topics["outcomes"]


@dataclass
class BigStubs(Stubs):
    """Stubs whose shipment id or refund detail makes the saga's event too large."""

    big_shipment: bool = False
    big_refund: bool = False

    @activity.defn(name=CREATE_SHIPMENT)
    async def ship(self, req: ShipmentRequest) -> Shipment:
        await self._enter(CREATE_SHIPMENT)
        suffix = BIG if self.big_shipment else req.order_id
        return Shipment(f"shp-{suffix}", req.order_id)

    @activity.defn(name=REFUND)
    async def refund(self, req: RefundRequest) -> str:
        await self._enter(REFUND)
        return f"refunded {req.payment_id} {BIG if self.big_refund else ''}".strip()


def big_rig(settings, catalog, client, services, topics, uid, stubs) -> Any:
    """``rig`` with the publisher's producer limited to ``LIMIT`` bytes per request."""
    return rig(settings, catalog, client, services, topics, uid, stubs, max_request_size=LIMIT)


async def test_a_completed_outcome_too_large_is_published_as_failed(
    settings, catalog, client, services: Services, topics, uid
):
    stubs = BigStubs(big_shipment=True)
    async with big_rig(settings, catalog, client, services, topics, uid, stubs) as r:
        handle, _ = await r.start("o-big")
        await settled(handle)
        result = await handle.result()
        [outcome] = await r.events(r.topics["outcomes"], 1, "o-big")
        progress = await handle.query("ktb_progress")
    assert result["status"] == "failed"
    assert result["step"] == PUBLISH_OUTCOME
    assert "completed outcome could not be published" in result["reason"]
    assert "MessageSizeTooLargeError" in result["reason"]
    assert outcome.type == FAILED
    assert outcome.id == result["outcome_event_id"]
    assert outcome.data["step"] == PUBLISH_OUTCOME
    assert outcome.data["reason"] == result["reason"]
    # Every step was done: a finished process is not undone.
    assert stubs.calls == [RESERVE, CHARGE, CREATE_SHIPMENT]
    assert stubs.statuses == ["processing", "failed"]
    assert progress["step"] == "failed"


async def test_a_compensation_event_too_large_still_ends_compensated(
    settings, catalog, client, services: Services, topics, uid
):
    stubs = BigStubs(big_refund=True)
    stubs.fail[CREATE_SHIPMENT] = ValidationError("no carrier")
    async with big_rig(settings, catalog, client, services, topics, uid, stubs) as r:
        handle, _ = await r.start("o-comp")
        await settled(handle)
        result = await handle.result()
        [outcome] = await r.events(r.topics["outcomes"], 1, "o-comp")
        [step] = await r.events(r.topics["compensations"], 1, "o-comp")
        progress = await handle.query("ktb_progress")
    # The refund happened and the rest of the unwinding ran.
    assert stubs.calls == [RESERVE, CHARGE, CREATE_SHIPMENT, REFUND, RELEASE]
    assert result["status"] == "compensated"
    assert result["compensated_steps"] == ["charge_payment", "reserve_inventory"]
    assert result["unpublished_compensations"] == ["charge_payment"]
    assert result["reason"] == (
        "ValidationError: no carrier; compensation event not published for charge_payment"
    )
    assert outcome.type == COMPENSATED
    assert outcome.data["compensated_steps"] == ["charge_payment", "reserve_inventory"]
    assert outcome.data["reason"] == result["reason"]
    assert step.type == STEP_COMPENSATED
    assert step.data["step"] == "reserve_inventory"
    assert [(c["step"], c["status"]) for c in progress["compensations"]] == [
        ("charge_payment", "done"),
        ("reserve_inventory", "done"),
    ]
    assert "not published" in progress["compensations"][0]["detail"]


async def test_an_outcome_kafka_never_takes_fails_the_workflow_saying_so(
    settings, catalog, client, services: Services, topics, uid
):
    # Every event of this order carries its id (data and key): none fits.
    stubs = BigStubs()
    async with big_rig(settings, catalog, client, services, topics, uid, stubs) as r:
        handle = await start_big_order(r)
        await settled(handle)
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            failure = exc.cause
        else:
            raise AssertionError("the saga completed without publishing its outcome")
        progress = await handle.query("ktb_progress")
    assert isinstance(failure, ApplicationError)
    assert failure.type == "OutcomeNotPublished"
    assert failure.non_retryable
    assert failure.message.startswith("the saga ended failed, but its outcome could not be")
    assert "MessageSizeTooLargeError" in failure.message
    assert stubs.calls == [RESERVE, CHARGE, CREATE_SHIPMENT]
    assert progress["step"] == "outcome_not_published"


async def start_big_order(r: Rig) -> WorkflowHandle[Any, Any]:
    """An order whose id alone is over the publisher's size limit (the workflow id is not)."""
    return await r.client.start_workflow(
        "OrderFulfillment",
        order_data(f"o-{BIG}"),
        id=f"order-{r.uid}-big-id",
        task_queue=r.task_queue,
        memo={
            "ktb": {"event_id": f"evt-{r.uid}-big", "tenant_id": "t-1", "traceparent": None},
            "outcome_topic": r.topics["outcomes"],
            "compensation_topic": r.topics["compensations"],
            "inventory_queue": r.task_queue,
            "payments_queue": r.task_queue,
            "shipping_queue": r.task_queue,
        },
    )
