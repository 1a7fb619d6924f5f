"""Payments: charges against a simulated card gateway (activities ``payments.*``).

Test tokens: ``tok_visa`` is captured at once; ``tok_declined`` is declined (never
retried); ``tok_flaky`` fails with a network error on its first two attempts and
then succeeds (attempts are counted in the service's database, so this holds
across retries and worker restarts); ``tok_async`` leaves the payment pending
until the processor confirms it with a ``com.example.payment.confirmed`` event.
"""

from __future__ import annotations

from dataclasses import dataclass

CHARGE = "payments.charge"
CONFIRM = "payments.confirm"
REFUND = "payments.refund"
SETTLE = "payments.settle"

CAPTURED = "captured"
PENDING = "pending"


@dataclass
class ChargeRequest:
    """Charge one order."""

    order_id: str
    amount_cents: int
    currency: str
    token: str
    customer_id: str | None = None
    """Whose order it is (the storefront lists a customer's payments); ``None`` in the
    requests of runs started before it was carried."""


@dataclass
class Charge:
    """A payment: ``captured``, or ``pending`` until the processor confirms it."""

    payment_id: str
    order_id: str
    status: str


@dataclass
class ConfirmRequest:
    """The processor's confirmation of a pending payment."""

    order_id: str
    payment_id: str
    amount_cents: int


@dataclass
class RefundRequest:
    """Give the money of one order back (compensation)."""

    order_id: str
    payment_id: str


@dataclass
class SettleRequest:
    """One settlement: the captured payments of one batch, in one currency."""

    settlement_id: str
    currency: str
    payment_ids: list[str]
    amount_cents: int
    event_ids: list[str]
