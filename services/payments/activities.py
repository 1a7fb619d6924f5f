"""Payments activities: charge, confirm and refund, idempotent per order."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from temporalio import activity

from bridge import (
    AuthorizationError,
    CircuitBreaker,
    Fault,
    NetworkError,
    ValidationError,
)
from services.payments import (
    CAPTURED,
    CHARGE,
    CONFIRM,
    PENDING,
    REFUND,
    SETTLE,
    Charge,
    ChargeRequest,
    ConfirmRequest,
    RefundRequest,
    SettleRequest,
)
from services.store import Store, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    processor_ref TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    customer_id TEXT
);
CREATE INDEX IF NOT EXISTS payments_customer ON payments (customer_id);
CREATE TABLE IF NOT EXISTS settlements (
    settlement_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    payments INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    event_ids TEXT NOT NULL,
    settled_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    order_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    token TEXT NOT NULL,
    result TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (order_id, attempt)
);
"""

FLAKY_FAILURES = 2


class CardDeclined(AuthorizationError):
    """The card issuer declined the charge."""

    error_type = "card_declined"


class CardGateway:
    """A stand-in for the card processor, driven by the test tokens."""

    async def authorize(self, token: str, amount_cents: int, attempt: int) -> str:
        """``captured`` or ``pending``; raises the fault the token stands for."""
        if token == "tok_visa":
            return CAPTURED
        if token == "tok_async":
            return PENDING
        if token == "tok_declined":
            raise CardDeclined("the card was declined by its issuer", token=token)
        if token == "tok_flaky":
            if attempt <= FLAKY_FAILURES:
                raise NetworkError(f"gateway connection reset (attempt {attempt})", attempt=attempt)
            return CAPTURED
        raise ValidationError(f"unknown payment token {token!r}", token=token)


class Payments:
    """The payments service's activities over its own database."""

    def __init__(
        self,
        store: Store,
        gateway: CardGateway | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway or CardGateway()
        self.breaker = breaker or CircuitBreaker("card-gateway")

    @activity.defn(name=CHARGE)
    async def charge(self, req: ChargeRequest) -> Charge:
        """Charge the card once per order; a repeated call returns the same payment."""
        if req.amount_cents <= 0:
            raise ValidationError("amount must be positive", amount_cents=req.amount_cents)

        def start(conn: sqlite3.Connection) -> Charge | int:
            row = conn.execute(
                "SELECT payment_id, status FROM payments WHERE order_id = ?", (req.order_id,)
            ).fetchone()
            if row is not None:
                return Charge(row["payment_id"], req.order_id, row["status"])
            attempt: int = (
                conn.execute(
                    "SELECT COUNT(*) FROM attempts WHERE order_id = ?", (req.order_id,)
                ).fetchone()[0]
                + 1
            )
            conn.execute(
                "INSERT INTO attempts (order_id, attempt, token, at) VALUES (?, ?, ?, ?)",
                (req.order_id, attempt, req.token, now()),
            )
            return attempt

        started = await self.store.run(start)
        if isinstance(started, Charge):
            return started
        attempt = started
        try:
            async with self.breaker.guard():
                status = await self.gateway.authorize(req.token, req.amount_cents, attempt)
        except Fault as fault:
            await self._attempt_result(req.order_id, attempt, fault.error_type)
            raise
        payment_id = f"pay-{req.order_id}"

        def finish(conn: sqlite3.Connection) -> Charge:
            stamp = now()
            conn.execute(
                "INSERT INTO payments (order_id, payment_id, amount_cents, currency, status,"
                " created_at, updated_at, customer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    req.order_id,
                    payment_id,
                    req.amount_cents,
                    req.currency,
                    status,
                    stamp,
                    stamp,
                    req.customer_id,
                ),
            )
            conn.execute(
                "UPDATE attempts SET result = ? WHERE order_id = ? AND attempt = ?",
                (status, req.order_id, attempt),
            )
            return Charge(payment_id, req.order_id, status)

        return await self.store.run(finish)

    async def _attempt_result(self, order_id: str, attempt: int, result: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE attempts SET result = ? WHERE order_id = ? AND attempt = ?",
                (result, order_id, attempt),
            )

        await self.store.run(tx)

    @activity.defn(name=CONFIRM)
    async def confirm(self, req: ConfirmRequest) -> Charge:
        """Capture a pending payment the processor confirmed; the amount must match."""

        def tx(conn: sqlite3.Connection) -> Charge:
            row = conn.execute(
                "SELECT payment_id, amount_cents, status FROM payments WHERE order_id = ?",
                (req.order_id,),
            ).fetchone()
            if row is None:
                raise ValidationError(f"order {req.order_id} has no payment to confirm")
            if row["amount_cents"] != req.amount_cents:
                raise ValidationError(
                    f"confirmed {req.amount_cents} but charged {row['amount_cents']}",
                    order_id=req.order_id,
                )
            if row["status"] == PENDING:
                conn.execute(
                    "UPDATE payments SET status = ?, processor_ref = ?, updated_at = ?"
                    " WHERE order_id = ?",
                    (CAPTURED, req.payment_id, now(), req.order_id),
                )
                return Charge(row["payment_id"], req.order_id, CAPTURED)
            return Charge(row["payment_id"], req.order_id, row["status"])

        return await self.store.run(tx)

    @activity.defn(name=REFUND)
    async def refund(self, req: RefundRequest) -> str:
        """Refund a captured payment or void a pending one; twice changes nothing."""

        def tx(conn: sqlite3.Connection) -> str:
            row: Any = conn.execute(
                "SELECT payment_id, amount_cents, currency, status FROM payments"
                " WHERE order_id = ?",
                (req.order_id,),
            ).fetchone()
            if row is None:
                return f"no payment for order {req.order_id}"
            amount = f"{row['amount_cents']} {row['currency']}"
            if row["status"] == CAPTURED:
                new_status, detail = "refunded", f"refunded {row['payment_id']} ({amount})"
            elif row["status"] == PENDING:
                new_status, detail = "voided", f"voided pending {row['payment_id']} ({amount})"
            else:
                return f"payment {row['payment_id']} already {row['status']}"
            conn.execute(
                "UPDATE payments SET status = ?, updated_at = ? WHERE order_id = ?",
                (new_status, now(), req.order_id),
            )
            return detail

        return await self.store.run(tx)


class Settlements:
    """Settles batches of captured payments (``SettlementBatch``), once per settlement id."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name=SETTLE)
    async def settle(self, req: SettleRequest) -> bool:
        """Record the settlement; ``False`` when a retried call finds it recorded already."""

        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO settlements (settlement_id, currency, payments,"
                " amount_cents, event_ids, settled_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    req.settlement_id,
                    req.currency,
                    len(req.payment_ids),
                    req.amount_cents,
                    json.dumps(req.event_ids),
                    now(),
                ),
            )
            return bool(cur.rowcount)

        return await self.store.run(tx)
