"""``SettlementBatch``: captured payments settled in batches, fed by the ``settle-payments``
route (``batch: {max_events: 100, max_wait: 5s}`` per currency).

The bridge collects the ``com.example.payment.captured`` events of one currency
into a window (``bridge.sdk.window``) and starts one run per full batch, or per
``max_wait`` after the first event of a batch that is not full. A run receives
every event of its batch, each once, as the messages signals carry
(``{event_id, event_type, tenant_id, payload}``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bridge import retry_policy
    from services.payments import SETTLE, SettleRequest

SETTLE_TIMEOUT = timedelta(seconds=30)


@workflow.defn
class SettlementBatch:
    """Settles one batch of captured payments of one currency."""

    @workflow.run
    async def run(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Settle every payment of the batch in one settlement; return its summary."""
        payments = [e["payload"] for e in events]
        request = SettleRequest(
            # One id per batch: the run's id and its first event (a retried activity
            # settles the same batch, not a new one).
            settlement_id=f"{workflow.info().workflow_id}/{events[0]['event_id']}",
            currency=payments[0]["currency"],
            payment_ids=[p["payment_id"] for p in payments],
            amount_cents=sum(int(p["amount_cents"]) for p in payments),
            event_ids=[e["event_id"] for e in events],
        )
        await workflow.execute_activity(
            SETTLE, request, start_to_close_timeout=SETTLE_TIMEOUT, retry_policy=retry_policy()
        )
        return {
            "settlement_id": request.settlement_id,
            "payments": len(payments),
            "amount_cents": request.amount_cents,
            "currency": request.currency,
        }
