"""Capped exponential backoff: the one retry schedule of the engine and of start-up."""

from __future__ import annotations

import random
import time


class Backoff:
    """Delays doubling from ``initial`` up to ``maximum``; with ``jitter``, each is drawn
    between half and all of that (so retrying keys spread out); with ``deadline_s``,
    ``exhausted`` says when waiting the next delay would pass the deadline."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        jitter: bool = False,
        deadline_s: float | None = None,
    ) -> None:
        self.maximum = maximum
        self.jitter = jitter
        self.delay = initial
        """The delay the next call to ``wait`` (or ``next``) uses, before jitter."""
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s

    def next(self) -> float:
        """The next delay to wait; the one after it doubles, up to ``maximum``."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay * (0.5 + random.random() / 2) if self.jitter else delay

    @property
    def exhausted(self) -> bool:
        """Whether waiting the next delay would pass the deadline."""
        return self._deadline is not None and time.monotonic() + self.delay > self._deadline
