"""How long an operation will take: the running median of recent runs of its workflow type."""

from __future__ import annotations

import statistics
import time
from datetime import datetime


class RunningMedian:
    """The median duration of the last ``size`` runs of one workflow type.

    Runs are fed by run id as the storefront sees them close (in visibility listings),
    so a run seen twice counts once.
    """

    def __init__(self, size: int) -> None:
        self._runs: dict[str, tuple[datetime, float]] = {}
        self._size = size
        self.refreshed_at: float | None = None
        """``time.monotonic()`` of the last refresh from a listing of recent runs."""

    def add(self, run_id: str, started: datetime, closed: datetime) -> None:
        """Count one closed run (again: no change); beyond ``size`` runs the one that
        closed first drops out, whatever order the runs were seen in."""
        if run_id in self._runs:
            return
        self._runs[run_id] = (closed, max(0.0, (closed - started).total_seconds()))
        if len(self._runs) > self._size:
            del self._runs[min(self._runs, key=lambda r: self._runs[r][0])]

    def refreshed(self) -> None:
        """Note that recent runs were just listed."""
        self.refreshed_at = time.monotonic()

    def stale(self, max_age_s: float) -> bool:
        """Whether the runs were last listed more than ``max_age_s`` ago (or never)."""
        return self.refreshed_at is None or time.monotonic() - self.refreshed_at > max_age_s

    @property
    def runs(self) -> int:
        """How many runs the median is taken over."""
        return len(self._runs)

    def median_s(self) -> float | None:
        """The median duration in seconds; ``None`` before any run was seen."""
        return statistics.median(d for _, d in self._runs.values()) if self._runs else None
