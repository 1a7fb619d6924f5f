"""The read model's writes (the indexer's batches) and queries (the API's lookups).

Items are read back as the values the bridge wrote (``EventProvenance``,
``PublishedProvenance``), in the order they were appended to the provenance topic:
all items of one event id (or workflow id) sit in one partition, and a row's place is
its record's partition and offset and its index in the record (batches carry several).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bridge.errors import DatabaseUnavailable
from bridge.provenance import EventProvenance, PublishedProvenance, parse_record
from bridge.store import partitions
from bridge.store.database import Database

log = logging.getLogger("ktb.store")

MAX_HANDLINGS = 20
"""Records of one event id a lookup returns (redeliveries and replays add more)."""
MAX_PUBLISHED = 1000
"""Published events of one workflow a lookup returns."""
REPEATS = ("duplicate", "dry_run")
"""Outcomes that repeat an earlier handling rather than tell the event's effect."""

HANDLING_COLUMNS = (
    "at", "source_partition", "source_offset", "source_index", "event_id", "tenant_id",
    "event_type", "key", "topic", "partition", "offset", "route", "action", "outcome",
    "workflow_id", "run_id", "detail", "via",
)  # fmt: skip
HANDLING_TYPES = (
    "timestamptz", "int4", "int8", "int4", "text", "text", "text", "text",
    "text", "int4", "int8", "text", "text", "text", "text", "text",
    "text", "text",
)  # fmt: skip
PUBLISHED_COLUMNS = (
    "at", "source_partition", "source_offset", "source_index", "workflow_id", "ce_id", "type",
    "published_kind", "topic", "partition", "offset", "causation_id", "tenant_id",
)  # fmt: skip
PUBLISHED_TYPES = (
    "timestamptz", "int4", "int8", "int4", "text", "text", "text", "text",
    "text", "int4", "int8", "text", "text",
)  # fmt: skip


def _insert(table: str, columns: Sequence[str], types: Sequence[str]) -> str:
    """A multi-row insert of column arrays that skips rows already written."""
    names = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    return f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"


INSERT_HANDLINGS = _insert("ktb_handlings", HANDLING_COLUMNS, HANDLING_TYPES)
INSERT_PUBLISHED = _insert("ktb_published", PUBLISHED_COLUMNS, PUBLISHED_TYPES)
_EVENT_FIELDS = [f.name for f in fields(EventProvenance) if f.name != "kind"]
_PUBLISHED_FIELDS = [f.name for f in fields(PublishedProvenance) if f.name != "kind"]


@dataclass(frozen=True)
class Scope:
    """Whose records a lookup may return: one tenant's, or (auth off) everyone's."""

    tenant: str | None
    everyone: bool = False

    def allows(self, tenant: str | None) -> bool:
        """Whether a record of ``tenant`` is in scope."""
        return self.everyone or tenant == self.tenant


Cursor = tuple[datetime, int, int, int]
"""Where a listing stopped: an item's time and place in the provenance topic (partition,
offset, index in its record)."""
ANYONE = Scope(None, everyone=True)
"""Every tenant's records (the duplicate-id check, and callers with auth off)."""


@dataclass(frozen=True)
class Reservation:
    """An event id ``POST /events`` took (``offset`` ``None`` until Kafka acknowledged it)."""

    event_id: str
    type: str
    tenant_id: str | None
    key: str | None
    topic: str
    workflow_id: str | None
    partition: int | None = None
    offset: int | None = None


@dataclass
class Batch:
    """Rows of one transaction of the indexer, as column arrays."""

    handlings: list[list[Any]] = field(default_factory=lambda: [[] for _ in HANDLING_COLUMNS])
    published: list[list[Any]] = field(default_factory=lambda: [[] for _ in PUBLISHED_COLUMNS])
    days: set[date] = field(default_factory=set)
    records: int = 0
    """Provenance items read (a batch record holds several)."""
    skipped: int = 0
    """Items unreadable, without an event id, or older than the retention."""

    def add(self, value: bytes | None, partition: int, offset: int, first_day: date) -> None:
        """Add the items of one provenance record read at ``partition``/``offset``."""
        items = parse_record(value) if value else [None]
        for index, item in enumerate(items):
            self._add(item, partition, offset, index, first_day)

    def _add(
        self,
        item: EventProvenance | PublishedProvenance | None,
        partition: int,
        offset: int,
        index: int,
        first_day: date,
    ) -> None:
        self.records += 1
        at = _time(item.at) if item is not None else None
        if item is None or at is None or partitions.day_of(at) < first_day:
            self.skipped += 1
            return
        if isinstance(item, EventProvenance):
            if not item.event_id:
                self.skipped += 1
                return
            row: tuple[Any, ...] = (
                at, partition, offset, index, item.event_id, item.tenant_id, item.event_type,
                item.key, item.topic, item.partition, item.offset, item.route, item.action,
                item.outcome, item.workflow_id, item.run_id, item.detail, item.via,
            )  # fmt: skip
            columns = self.handlings
        else:
            row = (
                at, partition, offset, index, item.workflow_id, item.ce_id, item.type,
                item.published_kind, item.topic, item.partition, item.offset, item.causation_id,
                item.tenant_id,
            )  # fmt: skip
            columns = self.published
        for column, value_ in zip(columns, row, strict=True):
            column.append(value_)
        self.days.add(partitions.day_of(at))

    @property
    def rows(self) -> int:
        """Rows to write."""
        return len(self.handlings[0]) + len(self.published[0])


def _time(text: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _text(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def primary_of(handlings: list[EventProvenance]) -> EventProvenance | None:
    """Among an event's records, the one that tells its effect: the first not a repeat."""
    for item in handlings:
        if item.outcome not in REPEATS:
            return item
    return handlings[0] if handlings else None


def _event(row: asyncpg.Record) -> EventProvenance:
    values = {name: row[name] for name in _EVENT_FIELDS if name != "at"}
    return EventProvenance(**values, at=_text(row["at"]))


def _published(row: asyncpg.Record) -> PublishedProvenance:
    values = {name: row[name] for name in _PUBLISHED_FIELDS if name not in ("at",)}
    return PublishedProvenance(**values, at=_text(row["at"]))


class ProvenanceStore:
    """Lookups of the read model, and the indexer's writes into it."""

    def __init__(self, database: Database, retention_days: int = 30) -> None:
        self.database = database
        self.retention_days = retention_days
        self._days: set[date] = set()

    # --- writes ------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction; rows written before are left as they are."""
        if not batch.rows:
            return
        async with self.database.connection() as conn:
            try:
                await self._write(conn, batch)
            except asyncpg.CheckViolationError:
                # A day's partition this process created is gone (dropped by hand, or a
                # database restored from elsewhere): create it again and write once more.
                self._days.clear()
                await self._write(conn, batch)

    async def _write(self, conn: asyncpg.Connection, batch: Batch) -> None:
        missing = batch.days - self._days
        if missing:
            await partitions.ensure_days(conn, missing)
            self._days |= missing
        async with conn.transaction():
            if batch.handlings[0]:
                await conn.execute(INSERT_HANDLINGS, *batch.handlings)
            if batch.published[0]:
                await conn.execute(INSERT_PUBLISHED, *batch.published)

    async def expire(self) -> list[str]:
        """Drop what is older than the retention; the partitions dropped."""
        async with self.database.connection() as conn:
            dropped = await partitions.drop_expired(conn, self.retention_days)
        first_kept = partitions.cutoff(self.retention_days)
        self._days = {d for d in self._days if d >= first_kept}
        return dropped

    # --- lookups -----------------------------------------------------------------

    async def handlings(self, event_id: str, scope: Scope = ANYONE) -> list[EventProvenance]:
        """The records of ``event_id`` in ``scope``, oldest first (at most ``MAX_HANDLINGS``).

        Event ids are not unique across tenants (a Kafka producer chooses them): the
        scope keeps the records of the tenants a caller may see.
        """
        rows = await self._scoped("ktb_handlings", "event_id", event_id, scope, MAX_HANDLINGS)
        return [_event(row) for row in rows]

    async def primary(self, event_id: str, scope: Scope = ANYONE) -> EventProvenance | None:
        """The record that tells the event's effect (``primary_of``)."""
        return primary_of(await self.handlings(event_id, scope))

    async def published(self, workflow_id: str, scope: Scope = ANYONE) -> list[PublishedProvenance]:
        """Events ``workflow_id`` published (in ``scope``), in order, one per ``ce_id``
        (a retried activity publishes the same event again)."""
        rows = await self._scoped("ktb_published", "workflow_id", workflow_id, scope, MAX_PUBLISHED)
        seen: set[str] = set()
        out = []
        for row in rows:
            if row["ce_id"] not in seen:
                seen.add(row["ce_id"])
                out.append(_published(row))
        return out

    async def _scoped(
        self,
        table: str,
        column: str,
        value: str,
        scope: Scope,
        limit: int,
        conn: asyncpg.Connection | None = None,
    ) -> list[asyncpg.Record]:
        """Rows of ``table`` whose ``column`` is ``value``, in ``scope``, in topic order."""
        # Table and column are this module's constants, never input.
        query = (
            f"SELECT * FROM {table} WHERE {column} = $1 "
            "AND ($2 OR tenant_id IS NOT DISTINCT FROM $3) "
            "ORDER BY source_partition, source_offset, source_index LIMIT $4"
        )
        if conn is not None:
            rows: list[asyncpg.Record] = await conn.fetch(
                query, value, scope.everyone, scope.tenant, limit
            )
            return rows
        async with self.database.connection() as own:
            rows = await own.fetch(query, value, scope.everyone, scope.tenant, limit)
        return rows

    async def search(
        self,
        scope: Scope,
        *,
        key: str | None = None,
        workflow_id: str | None = None,
        read: tuple[str, int, int] | None = None,
        after: Cursor | None = None,
        limit: int = 50,
    ) -> list[tuple[EventProvenance, Cursor]]:
        """Records in ``scope``, newest first, by business key, workflow id or where they
        were read (topic, partition, offset), each with its cursor; ``after`` is the
        cursor of the last record of the previous page (keyset paging: pages stay
        stable while records are added)."""
        clauses: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if not scope.everyone:
            clauses.append(f"tenant_id IS NOT DISTINCT FROM {arg(scope.tenant)}")
        if key is not None:
            clauses.append(f"key = {arg(key)}")
        if workflow_id is not None:
            clauses.append(f"workflow_id = {arg(workflow_id)}")
        if read is not None:
            topic, partition, offset = read
            clauses.append(f"topic = {arg(topic)} AND partition = {arg(partition)}")
            clauses.append(f'"offset" = {arg(offset)}')
        if after is not None:
            place = ", ".join(arg(value) for value in after)
            clauses.append(f"(at, source_partition, source_offset, source_index) < ({place})")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Every value is a parameter; the clauses are this function's own text.
        query = (
            f"SELECT * FROM ktb_handlings {where} "
            "ORDER BY at DESC, source_partition DESC, source_offset DESC, source_index DESC "
            f"LIMIT {arg(limit)}"
        )
        async with self.database.connection() as conn:
            rows = await conn.fetch(query, *args)
        return [
            (
                _event(row),
                (row["at"], row["source_partition"], row["source_offset"], row["source_index"]),
            )
            for row in rows
        ]

    async def activity(self, scope: Scope, since: datetime) -> list[tuple[datetime, str, int]]:
        """Handlings in ``scope`` since ``since``, counted per minute and outcome, oldest
        minute first: ``(minute, outcome, records)``."""
        query = (
            "SELECT date_trunc('minute', at) AS minute, outcome, count(*) AS records "
            "FROM ktb_handlings WHERE at >= $1 AND ($2 OR tenant_id IS NOT DISTINCT FROM $3) "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        async with self.database.connection() as conn:
            rows = await conn.fetch(query, since, scope.everyone, scope.tenant)
        return [(row["minute"], row["outcome"], int(row["records"])) for row in rows]

    # --- ids of POST /events -------------------------------------------------------

    async def reserve(self, item: Reservation) -> Reservation | None:
        """Take ``item.event_id`` for ``POST /events``; ``None`` when taken now, else what
        the id was used for before: an event ``POST /events`` produced (or is producing)
        on any replica, or one the bridge handled (produced to Kafka some other way).

        One statement decides, so of concurrent callers on any replica exactly one
        takes an id. A reservation never completed (its replica died between reserving
        and producing, or could not release it) is taken over after
        ``STALE_RESERVATION``, unless the bridge has handled the id since."""
        async with self.database.connection() as conn:
            # A reservation released between the insert and the read is taken again.
            for _ in range(3):
                taken = await conn.fetchval(RESERVE, *_reserved(item), STALE_RESERVATION)
                if taken:
                    return None
                row = await conn.fetchrow(
                    "SELECT * FROM ktb_produced WHERE event_id = $1", item.event_id
                )
                if row is not None:
                    return _reservation(row)
                handled = await self._scoped(
                    "ktb_handlings", "event_id", item.event_id, ANYONE, MAX_HANDLINGS, conn
                )
                primary = primary_of([_event(r) for r in handled])
                if primary is not None:
                    return Reservation(
                        event_id=item.event_id,
                        type=primary.event_type or "",
                        tenant_id=primary.tenant_id,
                        key=primary.key,
                        topic=primary.topic,
                        workflow_id=primary.workflow_id,
                    )
        raise DatabaseUnavailable(
            f"could not reserve event id {item.event_id!r}: its reservation keeps changing"
        )

    async def produced(self, event_id: str) -> Reservation | None:
        """What ``POST /events`` produced (or is producing) under ``event_id``."""
        async with self.database.connection() as conn:
            row = await conn.fetchrow("SELECT * FROM ktb_produced WHERE event_id = $1", event_id)
        return _reservation(row) if row is not None else None

    async def produced_at(self, item: Reservation) -> None:
        """Record where Kafka put a reserved event, and the workflow it maps to."""
        async with self.database.connection() as conn:
            await conn.execute(
                """
                UPDATE ktb_produced SET partition = $2, "offset" = $3, workflow_id = $4
                WHERE event_id = $1
                """,
                item.event_id,
                item.partition,
                item.offset,
                item.workflow_id,
            )

    async def release(self, event_id: str) -> None:
        """Give back an id whose produce failed, so a retry of the request can take it."""
        async with self.database.connection() as conn:
            await conn.execute(
                'DELETE FROM ktb_produced WHERE event_id = $1 AND "offset" IS NULL', event_id
            )


STALE_RESERVATION = timedelta(minutes=5)
"""How long an id ``POST /events`` reserved but never recorded as produced stays taken:
far longer than a produce can take (the producer gives up on a request after 40 s)."""
RESERVE = """
INSERT INTO ktb_produced (event_id, at, tenant_id, type, key, topic, workflow_id)
SELECT $1, now(), $2, $3, $4, $5, $6
WHERE NOT EXISTS (SELECT 1 FROM ktb_handlings WHERE event_id = $1)
ON CONFLICT (event_id) DO UPDATE
    SET at = now(), tenant_id = EXCLUDED.tenant_id, type = EXCLUDED.type, key = EXCLUDED.key,
        topic = EXCLUDED.topic, workflow_id = EXCLUDED.workflow_id
    WHERE ktb_produced."offset" IS NULL AND ktb_produced.at < now() - $7::interval
RETURNING true
"""
"""Take an id unless the bridge handled it or another reservation holds it (stale ones
are taken over); a row comes back only when this call took the id."""


def _reserved(item: Reservation) -> tuple[Any, ...]:
    return (item.event_id, item.tenant_id, item.type, item.key, item.topic, item.workflow_id)


def _reservation(row: asyncpg.Record) -> Reservation:
    return Reservation(
        event_id=row["event_id"],
        type=row["type"],
        tenant_id=row["tenant_id"],
        key=row["key"],
        topic=row["topic"],
        workflow_id=row["workflow_id"],
        partition=row["partition"],
        offset=row["offset"],
    )


def batch_of(records: Iterable[tuple[bytes | None, int, int]], retention_days: int) -> Batch:
    """The items of ``(value, partition, offset)`` provenance records, as one batch."""
    batch = Batch()
    first_day = partitions.cutoff(retention_days)
    for value, partition, offset in records:
        batch.add(value, partition, offset, first_day)
    return batch
