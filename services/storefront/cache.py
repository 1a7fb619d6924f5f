"""The storefront's dashboard cache: per customer, with a TTL, in memory or in Redis.

Entries are evicted by events (an order of the customer completed, failed or was
compensated) as well as by age. A dashboard computed while an eviction happened must
not be stored afterwards, or it would outlive the event that made it stale: every
customer has a generation that an eviction advances, a fetch notes the generation
it started at, and a value is only served if it was stored at the current one.

Every answer reports what the cache did in an RFC 9211 ``Cache-Status`` header.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from bridge import ConfigError

CACHE_NAME = "storefront"
"""The cache's name in ``Cache-Status`` (RFC 9211 section 2)."""
MAX_MEMORY_ENTRIES = 10_000
"""An in-memory cache drops its least recently stored entries beyond this many."""


class CacheUnavailable(Exception):
    """The cache's backend did not answer: the dashboard is computed and not stored."""


@dataclass(frozen=True)
class Cached:
    """A stored dashboard and how many seconds it has left."""

    body: bytes
    ttl_s: float


@dataclass(frozen=True)
class CacheStatus:
    """What the cache did for one answer, as RFC 9211 writes it."""

    hit: bool
    ttl_s: float | None = None
    stored: bool = False
    collapsed: bool = False
    detail: str | None = None

    def header(self) -> str:
        """The ``Cache-Status`` field value, e.g. ``storefront; hit; ttl=12``."""
        params = ["hit"] if self.hit else ["fwd=miss"]
        if self.ttl_s is not None:
            params.append(f"ttl={max(0, int(self.ttl_s))}")
        if self.stored:
            params.append("stored")
        if self.collapsed:
            params.append("collapsed")
        if self.detail:
            params.append(f'detail="{self.detail}"')
        return "; ".join([CACHE_NAME, *params])


class Cache(Protocol):
    """Dashboards by key, each stored at a generation of its key."""

    async def generation(self, key: str) -> int:
        """The key's current generation (what a fetch starting now will store at)."""
        ...

    async def get(self, key: str) -> Cached | None:
        """The key's value if stored at its current generation and not expired."""
        ...

    async def put(self, key: str, body: bytes, ttl_s: float, generation: int) -> bool:
        """Store ``body`` unless the key was evicted since ``generation``; whether it was."""
        ...

    async def evict(self, key: str) -> None:
        """Drop the key's value and advance its generation."""
        ...

    async def aclose(self) -> None:
        """Release the backend."""
        ...


class MemoryCache:
    """The process's own cache (the default): each storefront replica keeps its own."""

    def __init__(self, max_entries: int = MAX_MEMORY_ENTRIES) -> None:
        self._entries: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._max = max_entries

    async def generation(self, key: str) -> int:
        """The key's current generation."""
        return self._generations.get(key, 0)

    async def get(self, key: str) -> Cached | None:
        """The live value of the key, if any."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, generation, body = found
        left = expires - time.monotonic()
        if left <= 0 or generation != self._generations.get(key, 0):
            del self._entries[key]
            return None
        return Cached(body, left)

    async def put(self, key: str, body: bytes, ttl_s: float, generation: int) -> bool:
        """Store unless evicted since ``generation``."""
        if generation != self._generations.get(key, 0):
            return False
        self._entries[key] = (time.monotonic() + ttl_s, generation, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return True

    async def evict(self, key: str) -> None:
        """Drop the value, advance the generation."""
        self._entries.pop(key, None)
        # Generations are only compared while a fetch is in flight: a key with no
        # entry can start over, which keeps the map as small as the entries.
        if key in self._generations or len(self._generations) < self._max:
            self._generations[key] = self._generations.get(key, 0) + 1

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisCache:
    """A cache the storefront replicas share (``KTB_CACHE_URL=redis://...``).

    A value is stored as ``<generation>:<body>`` under ``<key>``, the generation under
    ``<key>:gen``; one ``MGET`` reads both. A generation key lives longer than any value
    stored at it, so a value never outlives the eviction that advanced it.
    """

    def __init__(self, url: str, ttl_s: float) -> None:
        # Imported here: only a storefront configured for Redis needs the client.
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._generation_ttl_ms = int(max(ttl_s * 4, 60.0) * 1000)

    async def generation(self, key: str) -> int:
        """The key's current generation (0 when none was recorded)."""
        async with _unavailable():
            value = await self._redis.get(key + ":gen")
        return int(value) if value else 0

    async def get(self, key: str) -> Cached | None:
        """The value stored at the current generation, with its remaining TTL."""
        async with _unavailable(), self._redis.pipeline(transaction=False) as pipe:
            pipe.mget(key, key + ":gen")
            pipe.pttl(key)
            (value, generation), ttl_ms = await pipe.execute()
        if value is None:
            return None
        stored_at, _, body = bytes(value).partition(b":")
        if int(stored_at) != (int(generation) if generation else 0) or ttl_ms <= 0:
            return None
        return Cached(body, ttl_ms / 1000)

    async def put(self, key: str, body: bytes, ttl_s: float, generation: int) -> bool:
        """Store unless the generation moved on since the fetch started."""
        async with _unavailable():
            if await self.generation(key) != generation:
                return False
            await self._redis.set(key, str(generation).encode() + b":" + body, px=int(ttl_s * 1000))
        return True

    async def evict(self, key: str) -> None:
        """Advance the generation first (a concurrent ``put`` then stores a value no ``get``
        serves), then drop the value."""
        async with _unavailable(), self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key + ":gen")
            pipe.pexpire(key + ":gen", self._generation_ttl_ms)
            pipe.delete(key)
            await pipe.execute()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


@contextlib.asynccontextmanager
async def _unavailable() -> AsyncIterator[None]:
    """The Redis client's connection and protocol errors as ``CacheUnavailable``."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        raise CacheUnavailable(str(exc) or type(exc).__name__) from exc


def open_cache(url: str | None, ttl_s: float) -> Cache:
    """Redis at ``url`` (``redis://`` or ``rediss://``), else the process's memory."""
    if url is None:
        return MemoryCache()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"KTB_CACHE_URL must be a redis://, rediss:// or unix:// URL: {url!r}")
    return RedisCache(url, ttl_s)
