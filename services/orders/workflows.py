"""The ``OrderFulfillment`` workflow."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bridge.workflow import BridgeWorkflow, publish
    from services.orders import OUTCOME_TOPIC


@workflow.defn(name="OrderFulfillment")
class OrderFulfillment(BridgeWorkflow):
    """Fulfil one order and publish its outcome."""

    def __init__(self) -> None:
        self._ktb_setup()

    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        """Publish ``order.completed`` for the order and return it."""
        completed = {
            "order_id": order["order_id"],
            "customer_id": order["customer_id"],
            "total_cents": order["total_cents"],
            "currency": order["currency"],
            "reservation_id": None,
            "payment_id": None,
            "shipment_id": None,
        }
        self.ktb_progress_set("completing")
        await publish(
            workflow.memo_value("outcome_topic", OUTCOME_TOPIC, type_hint=str),
            "com.example.order.completed",
            completed,
            name="outcome",
            key=order["order_id"],
        )
        self.ktb_progress_set("completed")
        return {"status": "completed", **completed}
