"""The schema of the read model, as numbered migrations applied in order, once.

``ktb_schema_migrations`` lists the versions applied. Each migration runs in its own
transaction under an advisory lock, so concurrent ``ktb provision`` runs (or a
provision racing ``ktb dev``) apply each version exactly once. A new version is a
new entry at the end of ``MIGRATIONS``; applied entries are never edited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

log = logging.getLogger("ktb.store")

MIGRATION_LOCK = 0x6B7462_0001
"""Advisory lock key held while migrating (``ktb`` in hex, then a number)."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "provenance read model",
        """
        -- What happened to each event, one row per provenance record (live, replay,
        -- redrive). Keyed by the record's place in the provenance topic: a record read
        -- twice is written once. Partitioned by day of `at` (bridge.store.partitions).
        CREATE TABLE ktb_handlings (
            at timestamptz NOT NULL,
            source_partition integer NOT NULL,
            source_offset bigint NOT NULL,
            event_id text NOT NULL,
            tenant_id text,
            event_type text,
            key text,
            topic text NOT NULL,
            partition integer NOT NULL,
            "offset" bigint NOT NULL,
            route text,
            action text,
            outcome text NOT NULL,
            workflow_id text,
            run_id text,
            detail text,
            via text NOT NULL,
            PRIMARY KEY (source_partition, source_offset, at)
        ) PARTITION BY RANGE (at);
        CREATE INDEX ktb_handlings_event ON ktb_handlings (event_id);
        CREATE INDEX ktb_handlings_workflow ON ktb_handlings (workflow_id)
            WHERE workflow_id IS NOT NULL;
        CREATE INDEX ktb_handlings_key ON ktb_handlings (tenant_id, key, at)
            WHERE key IS NOT NULL;
        CREATE INDEX ktb_handlings_read ON ktb_handlings (topic, partition, "offset");
        CREATE INDEX ktb_handlings_tenant_time ON ktb_handlings (tenant_id, at);

        -- What each workflow published (outcomes, compensations).
        CREATE TABLE ktb_published (
            at timestamptz NOT NULL,
            source_partition integer NOT NULL,
            source_offset bigint NOT NULL,
            workflow_id text NOT NULL,
            ce_id text NOT NULL,
            type text NOT NULL,
            published_kind text NOT NULL,
            topic text NOT NULL,
            partition integer NOT NULL,
            "offset" bigint NOT NULL,
            causation_id text,
            tenant_id text,
            PRIMARY KEY (source_partition, source_offset, at)
        ) PARTITION BY RANGE (at);
        CREATE INDEX ktb_published_workflow ON ktb_published (workflow_id);

        -- Event ids POST /events took: the primary key is what makes two API
        -- replicas unable to both accept one id. Small (API-produced events only),
        -- so it is not partitioned; retention deletes its old rows.
        CREATE TABLE ktb_produced (
            event_id text PRIMARY KEY,
            at timestamptz NOT NULL,
            tenant_id text,
            type text NOT NULL,
            key text,
            topic text NOT NULL,
            workflow_id text,
            partition integer,
            "offset" bigint
        );
        CREATE INDEX ktb_produced_at ON ktb_produced (at);
        """,
    ),
    Migration(
        2,
        "provenance items batched per record",
        """
        -- A provenance record may carry several items: a row's place in the topic is
        -- its record's partition and offset and its index in the record. Rows written
        -- before were single items: index 0. The new keys are built on every day's
        -- partition under an exclusive lock: give up rather than queue every lookup
        -- behind a lock that long-running reads keep from being granted.
        SET LOCAL lock_timeout = '5s';
        ALTER TABLE ktb_handlings ADD COLUMN source_index integer NOT NULL DEFAULT 0;
        ALTER TABLE ktb_handlings DROP CONSTRAINT ktb_handlings_pkey;
        ALTER TABLE ktb_handlings
            ADD PRIMARY KEY (source_partition, source_offset, source_index, at);
        ALTER TABLE ktb_published ADD COLUMN source_index integer NOT NULL DEFAULT 0;
        ALTER TABLE ktb_published DROP CONSTRAINT ktb_published_pkey;
        ALTER TABLE ktb_published
            ADD PRIMARY KEY (source_partition, source_offset, source_index, at);
        """,
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest migration applied; 0 for a database ktb never touched."""
    exists = await conn.fetchval("SELECT to_regclass('ktb_schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM ktb_schema_migrations")
    return int(version or 0)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations the database lacks, in order; the versions applied."""
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS ktb_schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        current = await schema_version(conn)
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO ktb_schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("database schema migrated to version %d (%s)", migration.version,
                     migration.name)  # fmt: skip
            applied.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied
