"""The ``OrderFulfillment`` saga: reserve inventory → charge payment → create shipment.

Compensations release the reservation and refund (or void) the payment; they run
in reverse when a step fails, when an ``order.cancelled`` event arrives (signal
``cancel_order``) or when the workflow is cancelled. A ``tok_async`` payment waits
for the processor's ``payment.confirmed`` event (signal ``payment_confirmed``).
The outcome (``order.completed``, ``order.compensated`` or ``order.failed``) and
one ``order.step_compensated`` per undone step are published by the saga.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from bridge import BridgeWorkflow, Compensation, Saga, SagaEvents, retry_policy
    from services import orders
    from services.inventory import (
        RELEASE,
        RESERVE,
        Item,
        ReleaseRequest,
        Reservation,
        ReserveRequest,
    )
    from services.orders import RECORD, OrderRecord
    from services.payments import (
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

STEP_TIMEOUT = timedelta(seconds=10)
RECORD_TIMEOUT = timedelta(seconds=5)


@dataclass(frozen=True)
class Wiring:
    """Topics and task queues of one run, from the route's memo entries."""

    outcome_topic: str
    compensation_topic: str
    inventory_queue: str
    payments_queue: str
    shipping_queue: str
    payment_timeout: timedelta

    @classmethod
    def from_memo(cls) -> Wiring:
        """Read the memo entries the route set, with the service defaults."""

        def memo(key: str, default: str) -> str:
            return str(workflow.memo_value(key, default, type_hint=str))

        return cls(
            outcome_topic=memo("outcome_topic", orders.OUTCOME_TOPIC),
            compensation_topic=memo("compensation_topic", orders.COMPENSATION_TOPIC),
            inventory_queue=memo("inventory_queue", orders.INVENTORY_QUEUE),
            payments_queue=memo("payments_queue", orders.PAYMENTS_QUEUE),
            shipping_queue=memo("shipping_queue", orders.SHIPPING_QUEUE),
            payment_timeout=timedelta(
                seconds=float(memo("payment_timeout_s", str(orders.PAYMENT_TIMEOUT_S)))
            ),
        )

    def events(self) -> SagaEvents:
        """The saga's topics and event types."""
        return SagaEvents(
            outcome_topic=self.outcome_topic,
            compensation_topic=self.compensation_topic,
            completed=orders.COMPLETED,
            failed=orders.FAILED,
            compensated=orders.COMPENSATED,
            step_compensated=orders.STEP_COMPENSATED,
        )


@workflow.defn(name="OrderFulfillment")
class OrderFulfillment(BridgeWorkflow):
    """Fulfil one order as a saga and publish its outcome."""

    def __init__(self) -> None:
        self._ktb_setup()
        self._saga: Saga | None = None
        self._cancel: tuple[str, str | None] | None = None
        self._confirmation: dict[str, Any] | None = None

    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        """Run the saga; return its outcome (a workflow cancellation is re-raised)."""
        wiring = Wiring.from_memo()
        order_id = order["order_id"]
        # Every event the saga publishes names the customer: consumers keyed by customer
        # (the storefront's cache, digests) need no lookup of their own.
        data = {"order_id": order_id, "customer_id": order.get("customer_id")}
        saga = Saga(wiring.events(), key=order_id, data=data, owner=self)
        self._saga = saga
        if self._cancel is not None:
            # Started by the cancellation itself (signal-with-start): nothing to do.
            saga.abort(*self._cancel)
        try:
            outcome = await saga.run(lambda: self._fulfil(order, wiring))
        except asyncio.CancelledError:
            await self._record(order, "cancelled", "workflow cancelled")
            raise
        await self._record(order, outcome.status, outcome.reason)
        return outcome.as_dict()

    async def _fulfil(self, order: dict[str, Any], wiring: Wiring) -> dict[str, Any]:
        """The steps, each registering how to undo it."""
        assert self._saga is not None
        saga = self._saga
        order_id = order["order_id"]
        items = [Item(**item) for item in order["items"]]
        policy = retry_policy()
        await self._record(order, "processing")

        reservation: Reservation = await saga.step(
            "reserve_inventory",
            lambda: workflow.execute_activity(
                RESERVE,
                ReserveRequest(order_id, items),
                task_queue=wiring.inventory_queue,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=policy,
                result_type=Reservation,
            ),
            lambda r: Compensation(
                RELEASE, [ReleaseRequest(order_id, r.reservation_id)], wiring.inventory_queue
            ),
        )
        charge: Charge = await saga.step(
            "charge_payment",
            lambda: workflow.execute_activity(
                CHARGE,
                ChargeRequest(
                    order_id,
                    order["total_cents"],
                    order["currency"],
                    order["payment_token"],
                    order.get("customer_id"),
                ),
                task_queue=wiring.payments_queue,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=policy,
                result_type=Charge,
            ),
            lambda c: Compensation(
                REFUND, [RefundRequest(order_id, c.payment_id)], wiring.payments_queue
            ),
        )
        if charge.status == PENDING:
            self.ktb_progress_set("awaiting_payment_confirmation", payment_id=charge.payment_id)
            try:
                await workflow.wait_condition(
                    lambda: self._confirmation is not None, timeout=wiring.payment_timeout
                )
            except TimeoutError:
                raise ApplicationError(
                    f"payment {charge.payment_id} was not confirmed within "
                    f"{wiring.payment_timeout.total_seconds():.0f} s",
                    type="PaymentNotConfirmed",
                    non_retryable=True,
                ) from None
            confirmation = self._confirmation or {}
            charge = await saga.step(
                "confirm_payment",
                lambda: workflow.execute_activity(
                    CONFIRM,
                    ConfirmRequest(
                        order_id, confirmation["payment_id"], confirmation["amount_cents"]
                    ),
                    task_queue=wiring.payments_queue,
                    start_to_close_timeout=STEP_TIMEOUT,
                    retry_policy=policy,
                    result_type=Charge,
                ),
            )
        shipment: Shipment = await saga.step(
            "create_shipment",
            lambda: workflow.execute_activity(
                CREATE_SHIPMENT,
                ShipmentRequest(order_id, order["customer_id"], sum(i.quantity for i in items)),
                task_queue=wiring.shipping_queue,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=policy,
                result_type=Shipment,
            ),
        )
        return {
            "customer_id": order["customer_id"],
            "total_cents": order["total_cents"],
            "currency": order["currency"],
            "reservation_id": reservation.reservation_id,
            "payment_id": charge.payment_id,
            "shipment_id": shipment.shipment_id,
        }

    async def _record(self, order: dict[str, Any], status: str, detail: str | None = None) -> None:
        """Update the orders read model (a local activity: same worker, no round trip)."""
        await workflow.execute_local_activity(
            RECORD,
            OrderRecord(
                order_id=order["order_id"],
                status=status,
                workflow_id=workflow.info().workflow_id,
                customer_id=order.get("customer_id"),
                total_cents=order.get("total_cents"),
                currency=order.get("currency"),
                detail=detail,
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=retry_policy(),
        )

    @workflow.signal(name="cancel_order")
    def cancel_order(self, message: dict[str, Any]) -> None:
        """An ``order.cancelled`` event: undo what was done (once per event id)."""
        payload = self.ktb_accept(message)
        if payload is None:
            return
        reason = f"cancelled: {payload.get('reason') or 'no reason given'}"
        self._cancel = (reason, message.get("event_id"))
        if self._saga is not None:
            self._saga.abort(*self._cancel)

    @workflow.signal(name="payment_confirmed")
    def payment_confirmed(self, message: dict[str, Any]) -> None:
        """A ``payment.confirmed`` event: the pending payment may be captured."""
        payload = self.ktb_accept(message)
        if payload is not None and self._confirmation is None:
            self._confirmation = payload
