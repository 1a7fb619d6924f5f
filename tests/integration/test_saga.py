"""``OrderFulfillment`` and the saga helper with stub activities under the real names.

The workflows run on the real dev server with a real publisher; the service
activities are stubs registered under the same names, so each test can make a
step fail, block or succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.envelope import Event
from bridge.sdk.egress import Publisher
from bridge.sdk.faults import FaultInterceptor, ValidationError
from bridge.settings import Settings
from services.inventory import RELEASE, RESERVE, ReleaseRequest, Reservation, ReserveRequest
from services.orders import RECORD, OrderRecord
from services.orders.workflows import OrderFulfillment
from services.payments import (
    CAPTURED,
    CHARGE,
    CONFIRM,
    PENDING,
    REFUND,
    Charge,
    ChargeRequest,
    ConfirmRequest,
    RefundRequest,
)
from services.shipping import CREATE_SHIPMENT, Shipment, ShipmentRequest
from tests.support import Services, eventually, order_data

COMPLETED = "com.example.order.completed"
COMPENSATED = "com.example.order.compensated"
FAILED = "com.example.order.failed"
STEP_COMPENSATED = "com.example.order.step_compensated"


@dataclass
class Stubs:
    """Stub service activities: record calls, fail or block on demand."""

    fail: dict[str, Exception] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    async def _enter(self, name: str) -> None:
        self.calls.append(name)
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        if name in self.fail:
            raise self.fail[name]

    @activity.defn(name=RECORD)
    async def record(self, order: OrderRecord) -> None:
        self.statuses.append(order.status)

    @activity.defn(name=RESERVE)
    async def reserve(self, req: ReserveRequest) -> Reservation:
        await self._enter(RESERVE)
        return Reservation(f"res-{req.order_id}", req.order_id)

    @activity.defn(name=RELEASE)
    async def release(self, req: ReleaseRequest) -> str:
        await self._enter(RELEASE)
        return f"released {req.reservation_id}"

    @activity.defn(name=CHARGE)
    async def charge(self, req: ChargeRequest) -> Charge:
        await self._enter(CHARGE)
        status = PENDING if req.token == "tok_async" else CAPTURED
        return Charge(f"pay-{req.order_id}", req.order_id, status)

    @activity.defn(name=CONFIRM)
    async def confirm(self, req: ConfirmRequest) -> Charge:
        await self._enter(CONFIRM)
        return Charge(f"pay-{req.order_id}", req.order_id, CAPTURED)

    @activity.defn(name=REFUND)
    async def refund(self, req: RefundRequest) -> str:
        await self._enter(REFUND)
        return f"refunded {req.payment_id}"

    @activity.defn(name=CREATE_SHIPMENT)
    async def ship(self, req: ShipmentRequest) -> Shipment:
        await self._enter(CREATE_SHIPMENT)
        return Shipment(f"shp-{req.order_id}", req.order_id)

    def activities(self) -> list[Any]:
        return [
            self.record,
            self.reserve,
            self.release,
            self.charge,
            self.confirm,
            self.refund,
            self.ship,
        ]


@dataclass
class Rig:
    """One worker with stubs on a unique task queue, and how to start orders on it."""

    client: Client
    services: Services
    stubs: Stubs
    task_queue: str
    topics: dict[str, str]
    uid: str

    async def start(
        self, order_id: str, token: str = "tok_visa"
    ) -> tuple[WorkflowHandle[Any, Any], str]:
        """Start an order as the bridge would (memo included); return it and its event id."""
        event_id = f"evt-{self.uid}-{order_id}"
        queue = self.task_queue
        handle = await self.client.start_workflow(
            "OrderFulfillment",
            order_data(order_id, token),
            id=f"order-{self.uid}-{order_id}",
            task_queue=queue,
            memo={
                "ktb": {"event_id": event_id, "tenant_id": "t-1", "traceparent": None},
                "outcome_topic": self.topics["outcomes"],
                "compensation_topic": self.topics["compensations"],
                "inventory_queue": queue,
                "payments_queue": queue,
                "shipping_queue": queue,
            },
        )
        return handle, event_id

    async def events(self, topic: str, count: int, key: str) -> list[Event]:
        """The first ``count`` events with ``key`` on ``topic`` (waits for them)."""

        async def enough() -> list[Event]:
            total = sum((await self.services.end_offsets(topic)).values())
            records = await self.services.read(topic, total, timeout=5)
            found = [self.services.decode(r) for r in records if r.key == key.encode()]
            found.sort(key=lambda e: (e.partition or 0, e.offset or 0))
            assert len(found) >= count, f"{len(found)} of {count} events on {topic}"
            return found

        return await eventually(enough, timeout=90)


@contextlib.asynccontextmanager
async def rig(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    services: Services,
    topics: dict[str, str],
    uid: str,
    stubs: Stubs,
    **producer_options: Any,
) -> AsyncIterator[Rig]:
    """A worker hosting ``OrderFulfillment``, the real publisher and ``stubs``.

    ``producer_options`` go to the publisher's producer (``max_request_size``, say).
    """
    producer = kafka.producer(settings, **producer_options)
    await producer.start()
    task_queue = f"saga-{uid}"
    try:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[OrderFulfillment],
            activities=[Publisher(producer, catalog, "tests").publish, *stubs.activities()],
            interceptors=[FaultInterceptor(scale=0.01)],
        ):
            yield Rig(client, services, stubs, task_queue, topics, uid)
    finally:
        await producer.stop()


@pytest.fixture
def stubs() -> Stubs:
    return Stubs()


@pytest.fixture
async def saga_rig(settings, catalog, client, services, topics, uid, stubs):
    async with rig(settings, catalog, client, services, topics, uid, stubs) as r:
        yield r


async def _history_types(handle: WorkflowHandle[Any, Any]) -> list[int]:
    return [e.event_type async for e in handle.fetch_history_events()]


async def test_completed_order_publishes_completed(saga_rig: Rig):
    handle, event_id = await saga_rig.start("o-1")
    result = await handle.result()
    assert result["status"] == "completed"
    assert result["shipment_id"] == "shp-o-1"
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-1")
    assert outcome.type == COMPLETED
    assert outcome.id == result["outcome_event_id"]
    assert outcome.causation_id == event_id
    assert outcome.correlation_id == handle.id
    assert outcome.tenant_id == "t-1"
    assert outcome.data["payment_id"] == "pay-o-1"
    assert saga_rig.stubs.calls == [RESERVE, CHARGE, CREATE_SHIPMENT]
    assert saga_rig.stubs.statuses == ["processing", "completed"]
    progress = await handle.query("ktb_progress")
    assert progress["step"] == "completed"
    assert "compensations" not in progress


async def test_failing_step_compensates_in_reverse(saga_rig: Rig):
    saga_rig.stubs.fail[CREATE_SHIPMENT] = ValidationError("no carrier for this address")
    handle, event_id = await saga_rig.start("o-2")
    result = await handle.result()
    assert result["status"] == "compensated"
    assert saga_rig.stubs.calls == [RESERVE, CHARGE, CREATE_SHIPMENT, REFUND, RELEASE]
    steps = await saga_rig.events(saga_rig.topics["compensations"], 2, "o-2")
    assert [e.type for e in steps] == [STEP_COMPENSATED] * 2
    assert [e.data["step"] for e in steps] == ["charge_payment", "reserve_inventory"]
    assert [e.data["detail"] for e in steps] == ["refunded pay-o-2", "released res-o-2"]
    assert {e.causation_id for e in steps} == {event_id}
    assert {e.correlation_id for e in steps} == {handle.id}
    assert len({e.id for e in steps}) == 2
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-2")
    assert outcome.type == COMPENSATED
    assert outcome.data["step"] == "create_shipment"
    assert outcome.data["reason"] == "ValidationError: no carrier for this address"
    assert outcome.data["compensated_steps"] == ["charge_payment", "reserve_inventory"]
    progress = await handle.query("ktb_progress")
    assert progress["step"] == "compensated"
    assert [c["step"] for c in progress["compensations"]] == [
        "charge_payment",
        "reserve_inventory",
    ]
    assert saga_rig.stubs.statuses == ["processing", "compensated"]


async def test_first_step_failing_publishes_failed(saga_rig: Rig):
    saga_rig.stubs.fail[RESERVE] = ValidationError("sku-1: out of stock")
    handle, _ = await saga_rig.start("o-3")
    result = await handle.result()
    assert result["status"] == "failed"
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-3")
    assert outcome.type == FAILED
    assert outcome.data == {
        "order_id": "o-3",
        "customer_id": "cust-1",
        "step": "reserve_inventory",
        "reason": "ValidationError: sku-1: out of stock",
    }
    assert saga_rig.stubs.calls == [RESERVE]


async def test_failing_compensation_is_reported_and_the_rest_still_run(saga_rig: Rig):
    saga_rig.stubs.fail[CREATE_SHIPMENT] = ValidationError("no carrier")
    saga_rig.stubs.fail[RELEASE] = ValidationError("reservation ledger closed")
    handle, _ = await saga_rig.start("o-4")
    result = await handle.result()
    assert result["status"] == "failed"
    assert result["failed_compensations"] == ["reserve_inventory"]
    [step] = await saga_rig.events(saga_rig.topics["compensations"], 1, "o-4")
    assert step.data["step"] == "charge_payment"
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-4")
    assert outcome.type == FAILED
    assert outcome.data["reason"] == (
        "ValidationError: no carrier; compensation failed for reserve_inventory"
    )
    progress = await handle.query("ktb_progress")
    assert [(c["step"], c["status"]) for c in progress["compensations"]] == [
        ("charge_payment", "done"),
        ("reserve_inventory", "failed"),
    ]


async def test_asynchronous_payment_waits_for_confirmation(saga_rig: Rig):
    handle, _ = await saga_rig.start("o-5", token="tok_async")

    async def waiting() -> bool:
        progress = await handle.query("ktb_progress")
        return progress["step"] == "awaiting_payment_confirmation"

    await eventually(waiting, timeout=90)
    confirmation = {
        "event_id": "evt-confirm-o-5",
        "event_type": "com.example.payment.confirmed",
        "tenant_id": None,
        "payload": {"order_id": "o-5", "payment_id": "psp-9", "amount_cents": 2500},
    }
    await handle.signal("payment_confirmed", confirmation)
    result = await handle.result()
    assert result["status"] == "completed"
    assert saga_rig.stubs.calls == [RESERVE, CHARGE, CONFIRM, CREATE_SHIPMENT]


async def test_cancel_signal_compensates_once_caused_by_the_cancel_event(saga_rig: Rig):
    handle, placed_id = await saga_rig.start("o-6", token="tok_async")

    async def waiting() -> bool:
        return (await handle.query("ktb_progress"))["step"] == "awaiting_payment_confirmation"

    await eventually(waiting, timeout=90)
    cancel = {
        "event_id": "evt-cancel-o-6",
        "event_type": "com.example.order.cancelled",
        "tenant_id": None,
        "payload": {"order_id": "o-6", "reason": "changed my mind"},
    }
    await handle.signal("cancel_order", cancel)
    await handle.signal("cancel_order", cancel)  # delivered twice: acted on once
    result = await handle.result()
    assert result["status"] == "compensated"
    assert saga_rig.stubs.calls == [RESERVE, CHARGE, REFUND, RELEASE]
    steps = await saga_rig.events(saga_rig.topics["compensations"], 2, "o-6")
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-6")
    assert outcome.type == COMPENSATED
    assert outcome.data["reason"] == "cancelled: changed my mind"
    assert outcome.data["step"] == "charge_payment"
    assert {e.causation_id for e in [*steps, outcome]} == {"evt-cancel-o-6"}
    assert placed_id != "evt-cancel-o-6"


async def test_workflow_cancellation_compensates_then_ends_cancelled(saga_rig: Rig):
    handle, _ = await saga_rig.start("o-7", token="tok_async")

    async def waiting() -> bool:
        return (await handle.query("ktb_progress"))["step"] == "awaiting_payment_confirmation"

    await eventually(waiting, timeout=90)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert isinstance(info.value.cause, CancelledError)
    assert saga_rig.stubs.calls == [RESERVE, CHARGE, REFUND, RELEASE]
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-7")
    assert outcome.type == COMPENSATED
    assert outcome.data["reason"] == "cancelled"
    assert outcome.data["compensated_steps"] == ["charge_payment", "reserve_inventory"]
    assert saga_rig.stubs.statuses == ["processing", "cancelled"]
    types = await _history_types(handle)
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED


async def test_cancellation_lets_the_running_step_finish_and_undoes_it(saga_rig: Rig):
    gate = asyncio.Event()
    saga_rig.stubs.gates[CHARGE] = gate
    handle, _ = await saga_rig.start("o-8")
    await eventually(lambda: _true(CHARGE in saga_rig.stubs.calls), timeout=90)
    await handle.cancel()

    async def cancel_seen_by_workflow() -> bool:
        # A workflow task completed after the cancel request: the body was interrupted
        # while the charge was still running.
        types = await _history_types(handle)
        requested = types.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
        return EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in types[requested:]

    await eventually(cancel_seen_by_workflow, timeout=90)
    gate.set()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert saga_rig.stubs.calls == [RESERVE, CHARGE, REFUND, RELEASE]
    types = await _history_types(handle)
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED not in types
    [outcome] = await saga_rig.events(saga_rig.topics["outcomes"], 1, "o-8")
    assert outcome.data["step"] == "charge_payment"
    assert outcome.data["compensated_steps"] == ["charge_payment", "reserve_inventory"]


async def _true(value: bool) -> bool:
    return value
