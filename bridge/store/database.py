"""The connection pool of the provenance database, and what counts as it being down.

The pool connects lazily (``min_size=0``): a process whose database is down still
starts, and its lookups answer ``DatabaseUnavailable`` until the database is back.
Broken connections are dropped by the pool and replaced on the next acquire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg

from bridge.errors import DatabaseUnavailable
from bridge.settings import Settings

log = logging.getLogger("ktb.store")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg's protocol raises this when the connection broke under an operation (a
    # commit as the server shut down: "cannot switch to state ...; another operation
    # is in progress"); the pool drops the connection and the next acquire reconnects.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,
)
"""Errors that mean the database cannot answer now (down, starting, stopping, full),
as opposed to a statement it refuses (a bug, never retried as an outage)."""


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class Database:
    """A pool of connections to ``KTB_DATABASE_URL``; ``connection()`` maps outages."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url.get_secret_value()
        self.pool_size = settings.database_pool_size
        self.timeout = settings.database_timeout_s
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool; no connection is made until one is needed."""
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=self.pool_size,
            timeout=self.timeout,
            command_timeout=self.timeout,
            max_inactive_connection_lifetime=60,
            reset=_reset,
        )

    async def close(self) -> None:
        """Close every connection (waiting at most ``timeout`` for busy ones)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except UNAVAILABLE:
                pool.terminate()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; the database being down (here or in the body) raises
        ``DatabaseUnavailable``."""
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(
                f"the database at {redacted(self.url)} is unavailable: {type(exc).__name__}: {exc}"
            ) from exc

    async def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            async with self.connection() as conn:
                await conn.fetchval("SELECT 1")
        except DatabaseUnavailable as exc:
            log.warning("readiness: %s", exc.message)
            return False
        return True


async def _reset(conn: asyncpg.Connection) -> None:
    """Before a connection goes back to the pool: roll back a transaction left open.

    asyncpg's default reset also runs ``RESET ALL; UNLISTEN *; CLOSE ALL;
    pg_advisory_unlock_all()`` on every release, a round trip per query; ktb sets no
    session state on pooled connections (the migration's lock is released by
    ``migrate`` itself), so only an open transaction needs undoing."""
    if conn.is_in_transaction():
        await conn.reset()
