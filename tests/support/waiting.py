"""Waiting on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.2
) -> T:
    """Retry ``check`` until it returns a truthy value, which is returned.

    An ``AssertionError`` from ``check`` means "not yet", like a falsy value. Once
    ``timeout`` has passed, the last call decides what the test sees: its own
    ``AssertionError``, or one naming the falsy value it returned. Other errors are
    not retried.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: AssertionError | T
        try:
            last = await check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        # One reading of the clock per try, after it: the verdict is always the last try's.
        if time.monotonic() >= deadline:
            if isinstance(last, AssertionError):
                raise last
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


async def until(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.005
) -> None:
    """Wait until ``condition()`` holds: ``eventually`` for in-memory state, polled often."""

    async def check() -> bool:
        return condition()

    await eventually(check, timeout, interval)
