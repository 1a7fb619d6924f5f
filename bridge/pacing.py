"""Rate limits of routes: a token bucket per route and bridge instance.

Over a route's limit its records wait for a token before their action is carried out:
nothing is dropped, and a record waiting is not done, so the commit rule holds as
ever. The per-key engine hands each record its partition's ``closed`` event, so a
record waiting when its partition is revoked gives up at once (``Abandoned``) and is
read again by whoever holds the partition next.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.errors import Abandoned
from bridge.observability.metrics import Metrics


class RateLimitSpec(BaseModel):
    """``rate_limit:`` of a route: ``per_second`` actions on average, ``burst`` at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_second: float = Field(gt=0, description="Tokens added per second")
    burst: int | None = Field(
        None, ge=1, description="Bucket size: actions allowed at once (default: one second's)"
    )

    @property
    def capacity(self) -> int:
        """``burst``, or one second's worth of tokens (at least one)."""
        return self.burst if self.burst is not None else max(1, math.ceil(self.per_second))

    @model_validator(mode="after")
    def _finite(self) -> RateLimitSpec:
        if not math.isfinite(self.per_second):
            raise ValueError("per_second must be a finite number")
        return self


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``capacity``; each action takes one.

    ``reserve`` takes a token at once and says how long to wait before using it (the
    bucket goes into debt), so waiters are served in the order they asked; ``refund``
    gives back a token that a waiter did not use. ``clock`` is injected for tests.
    """

    def __init__(
        self, rate: float, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.tokens = float(capacity)
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def reserve(self) -> float:
        """Take a token; the seconds to wait before it is there (0: now)."""
        self._refill()
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def refund(self) -> None:
        """Give back a reserved token that was not used."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens + 1)


class RateLimits:
    """The buckets of one bridge instance, one per rate-limited route.

    Time spent waiting is counted in ``ktb_rate_limited_seconds_total{route}``.
    """

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}

    def bucket(self, route: str, spec: RateLimitSpec) -> TokenBucket:
        """The route's bucket, made full on first use."""
        found = self.buckets.get(route)
        if found is None:
            found = self.buckets[route] = TokenBucket(spec.per_second, spec.capacity, self.clock)
        return found

    async def acquire(
        self, route: str, spec: RateLimitSpec, closed: asyncio.Event | None = None
    ) -> None:
        """Wait for a token of ``route``; ``Abandoned`` if ``closed`` is set first."""
        bucket = self.bucket(route, spec)
        delay = bucket.reserve()
        if delay <= 0:
            return
        started = self.clock()
        used = False
        try:
            if closed is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await closed.wait()
                if closed.is_set():
                    raise Abandoned(f"partition closed while route {route} was rate-limited")
            used = True
        finally:
            if not used:
                bucket.refund()
            self.metrics.rate_limited.labels(route).inc(max(0.0, self.clock() - started))
