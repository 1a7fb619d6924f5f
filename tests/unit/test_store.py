"""Pure parts of the provenance store: days and partitions, migrations, URLs in messages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import pytest

from bridge.errors import DatabaseUnavailable
from bridge.settings import Settings
from bridge.store import partitions
from bridge.store.database import Database, redacted
from bridge.store.migrations import LATEST_VERSION, MIGRATIONS


def test_records_fall_on_their_utc_day_and_the_retention_keeps_whole_days():
    late = datetime(2026, 12, 3, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert partitions.day_of(late) == date(2026, 12, 4)
    now = datetime(2026, 12, 3, 0, 5, tzinfo=UTC)
    assert partitions.cutoff(1, now) == date(2026, 12, 3)
    assert partitions.cutoff(30, now) == date(2026, 11, 4)
    assert partitions.partition_name("ktb_handlings", date(2026, 1, 2)) == "ktb_handlings_p20260102"


def test_migrations_are_numbered_in_order():
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert versions[-1] == LATEST_VERSION


def test_passwords_stay_out_of_messages():
    assert redacted("postgresql://ktb:s3cret@db:5432/ktb") == "postgresql://ktb:***@db:5432/ktb"
    assert redacted("postgresql://postgres@127.0.0.1:5432/ktb") == (
        "postgresql://postgres@127.0.0.1:5432/ktb"
    )


class _Pool:
    """Hands out one stand-in connection, as ``asyncpg.Pool.acquire`` does."""

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float) -> AsyncIterator[object]:
        yield object()


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    ],
)
async def test_a_connection_broken_under_an_operation_is_the_database_unavailable(error):
    # A commit as the server shut down raised asyncpg's InternalClientError and, not
    # counted as an outage, stopped the indexer's retention and with it the indexer.
    database = Database(Settings(database_url="postgresql://postgres@db:5432/ktb"))
    database._pool = _Pool()  # type: ignore[assignment]
    with pytest.raises(DatabaseUnavailable, match="postgres@db:5432/ktb is unavailable"):
        async with database.connection():
            raise error


async def test_a_statement_the_database_refuses_is_not_an_outage():
    database = Database(Settings(database_url="postgresql://postgres@db:5432/ktb"))
    database._pool = _Pool()  # type: ignore[assignment]
    with pytest.raises(asyncpg.exceptions.UndefinedColumnError):
        async with database.connection():
            raise asyncpg.exceptions.UndefinedColumnError("column x does not exist")
