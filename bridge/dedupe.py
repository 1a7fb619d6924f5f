"""The seen-set of event ids that makes a repeated bridge message a no-op.

Deterministic and free of I/O: workflows (``BridgeWorkflow``, the window collector)
keep one and carry ``state()`` over continue-as-new.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SEEN_LIMIT = 10_000
"""Ids kept; the oldest go first."""


class EventDedupe:
    """The ids of bridge signals/updates already applied; carry ``state()`` over continue-as-new."""

    def __init__(self, seen: Iterable[str] = ()) -> None:
        self._seen: dict[str, None] = dict.fromkeys(seen)

    def first_time(self, message: dict[str, Any]) -> bool:
        """True the first time an event id is seen; records it."""
        event_id = message.get("event_id")
        if not event_id:
            return True
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        return True

    def state(self) -> list[str]:
        """The seen ids, oldest first, to pass to the next run."""
        return list(self._seen)
