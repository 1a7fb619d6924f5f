"""Daily partitions of the provenance tables: created before records land in them,
dropped whole once older than the retention (no row deletes on the big tables).

Partition ``ktb_handlings_p20261203`` holds the records whose ``at`` falls on that
UTC day. Creating and dropping run under an advisory lock: several indexers may
see a new day at the same moment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import asyncpg

log = logging.getLogger("ktb.store")

PARTITIONED = ("ktb_handlings", "ktb_published")
"""The tables partitioned by day of ``at``."""
PARTITION_LOCK = 0x6B7462_0002
"""Advisory lock key held while partitions are created or dropped."""


def day_of(at: datetime) -> date:
    """The UTC day whose partition holds a record written at ``at``."""
    return at.astimezone(UTC).date()


def cutoff(retention_days: int, now: datetime | None = None) -> date:
    """The first day kept: partitions of earlier days are dropped, records of them skipped."""
    return day_of(now or datetime.now(UTC)) - timedelta(days=retention_days - 1)


def partition_name(table: str, day: date) -> str:
    """The partition of ``table`` for ``day``."""
    return f"{table}_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[str, str]:
    return f"{day.isoformat()} 00:00:00+00", f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"


async def existing_days(conn: asyncpg.Connection, table: str) -> set[date]:
    """The days ``table`` has a partition for."""
    names = await conn.fetch(
        """
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = $1
        """,
        table,
    )
    prefix = f"{table}_p"
    days = set()
    for row in names:
        name: str = row["relname"]
        if name.startswith(prefix):
            days.add(datetime.strptime(name[len(prefix) :], "%Y%m%d").date())
    return days


async def ensure_days(conn: asyncpg.Connection, days: Iterable[date]) -> None:
    """Create the partitions of ``days`` that are missing, in every partitioned table."""
    wanted = sorted(set(days))
    if not wanted:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        for table in PARTITIONED:
            have = await existing_days(conn, table)
            for day in wanted:
                if day in have:
                    continue
                low, high = _bounds(day)
                # Names and bounds are ours (a table constant and a date), never input.
                await conn.execute(
                    f"CREATE TABLE {partition_name(table, day)} PARTITION OF {table} "
                    f"FOR VALUES FROM ('{low}') TO ('{high}')"
                )


async def drop_expired(conn: asyncpg.Connection, retention_days: int) -> list[str]:
    """Drop the partitions of days before the retention, and old ``POST /events`` ids;
    the partitions dropped."""
    first_kept = cutoff(retention_days)
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        for table in PARTITIONED:
            for day in sorted(await existing_days(conn, table)):
                if day < first_kept:
                    name = partition_name(table, day)
                    await conn.execute(f"DROP TABLE IF EXISTS {name}")
                    dropped.append(name)
        await conn.execute(
            "DELETE FROM ktb_produced WHERE at < $1",
            datetime.combine(first_kept, datetime.min.time(), UTC),
        )
    if dropped:
        log.info("retention (%d days): dropped %s", retention_days, ", ".join(dropped))
    return dropped
