"""Storefront: the backend-for-frontend of the example shop (``python -m services.storefront
server``, on the API port + 6).

One UI view from several processes: a customer's dashboard joins, in parallel and with
a deadline per part, the customer's order processes (Temporal visibility by the
``CustomerId`` search attribute the ``start-order`` route sets, and the progress of
those in flight, through the bridge's HTTP API) with the read models of the orders,
payments and shipping services. A part that is slow or failing leaves a partial
answer that says so, never an error. Dashboards are cached per customer and evicted
when one of the customer's orders completes, fails or is compensated (the outcome
topic). Placing an order produces ``order.placed`` through the bridge's API and answers
at once with where to follow it and how long it is expected to take.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

PLACED = "com.example.order.placed"
CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
"""What a customer id in a path may be (it travels into a visibility query)."""
ORDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Item(BaseModel):
    """One line of an order."""

    sku: str = Field(min_length=1, max_length=128)
    quantity: int = Field(gt=0, le=10_000)
    unit_price_cents: int = Field(ge=0)


class OrderRequest(BaseModel):
    """``POST /customers/{customer_id}/orders``: what the customer orders."""

    order_id: str | None = Field(
        None, pattern=ORDER_PATTERN, description="Default: a new id; the same id twice is one order"
    )
    items: list[Item] = Field(min_length=1, max_length=100)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payment_token: str = Field(min_length=1, max_length=256)


class OrderAccepted(BaseModel):
    """The answer to a placed order: where to follow it, and how long it should take."""

    operation_id: str = Field(description="The order.placed event's id")
    order_id: str
    workflow_id: str | None
    duplicate: bool = Field(description="The order was placed before: nothing new happened")
    status_url: str
    progress_url: str
    estimated_duration_s: float | None = Field(
        description="Median duration of recent runs of the workflow; null before any ran"
    )
    estimate_runs: int = Field(description="How many recent runs the estimate is taken over")


class OrderView(BaseModel):
    """One order on a dashboard: its process and what each service knows of it."""

    order_id: str
    workflow_id: str | None
    status: str | None = Field(
        description="The order's status (orders read model), else its process's"
    )
    process_status: str | None
    progress: dict[str, Any] | None = Field(description="The process's progress while it runs")
    started_at: datetime | None
    closed_at: datetime | None
    order: dict[str, Any] | None
    payment: dict[str, Any] | None
    shipment: dict[str, Any] | None


class Dashboard(BaseModel):
    """A customer's orders for the UI; ``partial`` when a part did not answer in time."""

    customer_id: str
    generated_at: datetime
    orders: list[OrderView]
    partial: bool
    errors: dict[str, str] = Field(description="Per part that failed: what happened")
