"""Orders: the ``OrderFulfillment`` saga and the orders read model.

Route memo entries wire a workflow to its topics and task queues (``outcome_topic``,
``compensation_topic``, ``inventory_queue``, ``payments_queue``,
``shipping_queue``, ``payment_timeout_s``); the defaults below apply when absent.
"""

from __future__ import annotations

from dataclasses import dataclass

TASK_QUEUE = "orders"
OUTCOME_TOPIC = "orders.outcomes"
COMPENSATION_TOPIC = "orders.compensations"
INVENTORY_QUEUE = "inventory"
PAYMENTS_QUEUE = "payments"
SHIPPING_QUEUE = "shipping"
PAYMENT_TIMEOUT_S = 900.0

COMPLETED = "com.example.order.completed"
FAILED = "com.example.order.failed"
COMPENSATED = "com.example.order.compensated"
STEP_COMPENSATED = "com.example.order.step_compensated"

RECORD = "orders.record"


@dataclass
class OrderRecord:
    """The orders read model's row for one order."""

    order_id: str
    status: str
    workflow_id: str
    customer_id: str | None = None
    total_cents: int | None = None
    currency: str | None = None
    detail: str | None = None
