"""A workflow the HTTP API tests drive: it waits for a payment, then publishes its outcome."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from bridge.sdk.workflow import BridgeWorkflow, publish


@workflow.defn(name="KtbApiTestOrder")
class PaidOrder(BridgeWorkflow):
    """Runs until ``payment_confirmed``; a short payment is compensated and fails the order."""

    def __init__(self) -> None:
        self._ktb_setup()
        self.payment: dict[str, Any] | None = None

    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        """Wait for the payment, publish the outcome (or a compensation) and return."""
        order_id = order["order_id"]
        self.ktb_progress_set("awaiting_payment", order_id=order_id)
        await workflow.wait_condition(lambda: self.payment is not None)
        assert self.payment is not None
        if self.payment["amount_cents"] < order["total_cents"]:
            await publish(
                workflow.memo_value("compensation_topic", type_hint=str),
                "com.example.order.step_compensated",
                {"order_id": order_id, "step": "payment", "detail": "refunded short payment"},
                name="refund",
                key=order_id,
                kind="compensation",
            )
            raise ApplicationError("payment short of the total", type="PaymentShort")
        self.ktb_progress_set("paid", payment_id=self.payment["payment_id"])
        completed = {
            "order_id": order_id,
            "customer_id": order["customer_id"],
            "total_cents": order["total_cents"],
            "currency": order["currency"],
            "reservation_id": None,
            "payment_id": self.payment["payment_id"],
            "shipment_id": None,
        }
        await publish(
            workflow.memo_value("outcome_topic", type_hint=str),
            "com.example.order.completed",
            completed,
            name="outcome",
            key=order_id,
        )
        return {"status": "completed", "payment_id": self.payment["payment_id"]}

    @workflow.signal(name="payment_confirmed")
    def payment_confirmed(self, message: dict[str, Any]) -> None:
        """Take the first delivery of each payment event."""
        payload = self.ktb_accept(message)
        if payload is not None and self.payment is None:
            self.payment = payload


@workflow.defn(name="KtbApiTestQuick")
class QuickOrder(BridgeWorkflow):
    """Publishes ``order.completed`` at once and returns it."""

    def __init__(self) -> None:
        self._ktb_setup()

    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        """Complete the order."""
        completed = {
            "order_id": order["order_id"],
            "customer_id": order["customer_id"],
            "total_cents": order["total_cents"],
            "currency": order["currency"],
        }
        published = await publish(
            workflow.memo_value("outcome_topic", type_hint=str),
            "com.example.order.completed",
            completed,
            name="outcome",
            key=order["order_id"],
        )
        return {"status": "completed", "order_id": order["order_id"], "ce_id": published.ce_id}
