"""How many actions a process has in Temporal at once: fixed, or adapted to its latency.

The dispatcher takes a slot of its ``ActionLimit`` for every action it carries out,
live or replayed, and reports how long Temporal took to answer. Records past the
limit wait for a slot in arrival order; a record's key keeps its order because its
next record is not taken before.

With a fixed limit (``KTB_TEMPORAL_IN_FLIGHT=N``) that is all. The adaptive limit
(``auto``, the default) follows Temporal's answer times the way TCP Vegas follows
round trips, so the right concurrency for a server is found, not configured:

- ``floor`` is the fastest answer seen: a call with nothing queued ahead of it.
- Once per window (as many answers as the limit, at least ``WINDOW_MIN``), the
  median answer time of the window tells how many calls wait in Temporal's queues:
  ``limit * (1 - floor / median)``.
- Fewer than ``alpha`` waiting while the limit is in use: the limit grows (by a
  tenth while nothing queues at all, else by one); more than ``beta`` waiting: it
  shrinks by a tenth. A window with a call refused for overload (Temporal
  unavailable, throttling, a deadline missed) halves it. ``alpha``/``beta`` grow
  with the log of the limit, as in Vegas.
- The floor only falls, so sustained load never passes for a new normal. Should
  the limit sit at its minimum and still read a queue for ``STUCK_WINDOWS``
  windows, the server has become slower for good: the floor is measured afresh
  there, at the least concurrency the limit allows.

Below the server's knee the limit does not bind and latency is what the server
gives; past it, the limit keeps a handful of calls queued in Temporal instead of
hundreds, which is latency for every record and no throughput.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

WINDOW_MIN = 16
"""Fewest answers a window takes before the limit moves."""
STUCK_WINDOWS = 10
"""Windows at the minimum, still reading a queue, before the floor is measured afresh."""
DECREASE = 0.1
"""Share of the limit taken off per window while too many calls queue."""
GROWTH = 0.1
"""Share of the limit added per window while nothing queues."""


class ActionLimit:
    """A gate of ``limit`` slots for actions in Temporal, fixed or adaptive (module doc)."""

    def __init__(
        self,
        fixed: int | None = None,
        *,
        minimum: int = 16,
        maximum: int = 1024,
        initial: int | None = None,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"a fixed limit must be at least 1, not {fixed}")
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, not {minimum} and {maximum}")
        self.adaptive = fixed is None
        self.minimum = minimum
        self.maximum = maximum
        self._limit = float(fixed if fixed is not None else (initial or minimum))
        self._limit = min(max(self._limit, 1.0), float(maximum if self.adaptive else self._limit))
        self.in_flight = 0
        """Actions holding a slot now."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._samples: list[float] = []
        self._peak = 0
        self._failed = False
        self.floor: float | None = None
        """The lowest latency seen lately (seconds), ``None`` before the first window."""
        self._stuck = 0

    @property
    def limit(self) -> int:
        """Slots there are now."""
        return max(1, int(self._limit))

    @property
    def waiting(self) -> int:
        """Actions waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one action; on leaving, report its latency (or its failure).

        The body reports through ``observe`` what it measured: only an answer from
        Temporal is a latency sample, and a rate-limit wait or a decode is not.
        """
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Wait for a slot, in arrival order."""
        if not self._waiters and self.in_flight < self.limit:
            self._take()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted while being cancelled: hand it on
            elif waiter in self._waiters:  # _wake passes over (and drops) cancelled ones
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back and hand free slots to the oldest waiters."""
        self.in_flight -= 1
        self._wake()

    def observe(self, seconds: float) -> None:
        """One answer from Temporal that took ``seconds``."""
        if not self.adaptive:
            return
        self._samples.append(seconds)
        if len(self._samples) >= max(WINDOW_MIN, self.limit):
            self._adapt()

    def failed(self) -> None:
        """A call was refused for overload: Temporal unavailable, throttling, or a
        deadline missed."""
        if self.adaptive:
            self._failed = True
            self._samples.append(math.nan)
            if len(self._samples) >= max(WINDOW_MIN, self.limit):
                self._adapt()

    def _take(self) -> None:
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _adapt(self) -> None:
        samples = [s for s in self._samples if not math.isnan(s)]
        failed, peak, limit = self._failed, self._peak, self._limit
        self._samples, self._failed, self._peak = [], False, self.in_flight
        if failed:
            self._set(limit / 2)
            return
        if not samples:
            return
        median = statistics.median(samples)
        if self.floor is None or median < self.floor:
            self.floor = median
        queued = limit * (1 - self.floor / median) if median > 0 else 0.0
        scale = math.log10(max(limit, 10.0))
        alpha, beta = 3 * scale, 6 * scale
        if queued > beta:
            if limit > self.minimum:
                self._stuck = 0
                self._set(limit * (1 - DECREASE))
                return
            self._stuck += 1
            if self._stuck >= STUCK_WINDOWS:
                self.floor, self._stuck = median, 0
            return
        self._stuck = 0
        if queued < alpha and peak >= 0.9 * limit:
            self._set(limit + (max(1.0, limit * GROWTH) if queued < 1 else 1.0))

    def _set(self, limit: float) -> None:
        self._limit = min(max(limit, float(self.minimum)), float(self.maximum))
        self._wake()
