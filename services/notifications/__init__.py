"""Notifications: a downstream consumer of the order outcome and compensation topics.

It records what it would tell the customer, once per event: records are deduped
by ``ce_id``, so a republished event (a retried publishing activity) counts as
one more delivery of the same notification, never as a second notification.

Its worker also hosts ``CustomerDigest`` (task queue ``notifications``): the
``customer-digest`` route debounces completed orders per customer, and one digest
lists every order of a quiet period.
"""

from __future__ import annotations

from dataclasses import dataclass

SEND_DIGEST = "notifications.send_digest"


@dataclass
class Digest:
    """One customer digest: a line per order outcome of one quiet period."""

    digest_id: str
    customer_id: str | None
    """``None`` for a digest of one order's failure (the event names no customer)."""
    lines: list[str]
    event_ids: list[str]
