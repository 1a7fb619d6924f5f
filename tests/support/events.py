"""Valid payloads of the repository's event types (``schemas/``)."""

from __future__ import annotations

from typing import Any


def order_data(order_id: str, token: str = "tok_visa", total: int = 2500) -> dict[str, Any]:
    """A valid ``com.example.order.placed`` payload."""
    return {
        "order_id": order_id,
        "customer_id": "cust-1",
        "items": [{"sku": "sku-1", "quantity": 1, "unit_price_cents": total}],
        "total_cents": total,
        "currency": "EUR",
        "payment_token": token,
    }


def payment(order_id: str, payment_id: str, amount: int = 1) -> dict[str, Any]:
    """A valid ``com.example.payment.confirmed`` payload."""
    return {"order_id": order_id, "payment_id": payment_id, "amount_cents": amount}
