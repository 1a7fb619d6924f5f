"""Orders: the ``OrderFulfillment`` workflow and its HTTP read model."""

TASK_QUEUE = "orders"
OUTCOME_TOPIC = "orders.outcomes"
COMPENSATION_TOPIC = "orders.compensations"
