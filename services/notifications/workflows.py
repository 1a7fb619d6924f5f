"""``CustomerDigest``: one digest per customer per quiet period, fed by the
``customer-digest`` route (``debounce: {period: 2s, max_wait: 30s}`` per customer).

The bridge collects a customer's ``com.example.order.completed`` events into a
window (``bridge.sdk.window``); 2 s after the last one (30 s after the first at
most) it starts one run that receives every event of the window, each once, in
offset order, as the messages signals carry (``{event_id, event_type, tenant_id,
payload}``). The digest lists every one of them. Failed and compensated orders
name no customer: their outcomes make a digest per order (``digest-order-<id>``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bridge import retry_policy
    from services.notifications import SEND_DIGEST, Digest
    from services.notifications.consumer import outcome_message

SEND_TIMEOUT = timedelta(seconds=30)


@workflow.defn
class CustomerDigest:
    """Sends one customer one digest of the order outcomes of a quiet period."""

    @workflow.run
    async def run(self, events: list[dict[str, Any]]) -> Digest:
        """One line per event, in the order the window holds them; sent once."""
        digest = Digest(
            # One id per window: a retried activity sends the same digest, not a new one.
            digest_id=f"{workflow.info().workflow_id}/{events[0]['event_id']}",
            customer_id=events[0]["payload"].get("customer_id"),
            lines=[outcome_message(e["event_type"], e["payload"]) for e in events],
            event_ids=[e["event_id"] for e in events],
        )
        await workflow.execute_activity(
            SEND_DIGEST, digest, start_to_close_timeout=SEND_TIMEOUT, retry_policy=retry_policy()
        )
        return digest
