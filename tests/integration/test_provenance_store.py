"""The provenance read model in PostgreSQL: replicas racing on one id, the indexer killed
mid-batch, the database going away and coming back. Real Kafka, Temporal and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bridge import kafka
from bridge.api.auth import hash_key
from bridge.kafka import ensure_topics
from bridge.provenance import EventProvenance
from bridge.settings import Settings
from bridge.store import Database, ProvenanceStore, migrations, partitions
from bridge.store.provenance import STALE_RESERVATION, Reservation, batch_of
from bridge.temporal import attributes
from tests.integration.api_workflows import QuickOrder
from tests.support import (
    StackInfo,
    eventually,
    order_data,
    routes_config,
    running_api,
    running_bridge,
    running_worker,
    workflow_result,
    write_routes,
)

pytestmark = pytest.mark.integration
CE_JSON = {"Content-Type": "application/cloudevents+json"}
OUTAGE_S = 20.0
"""How long the outage test keeps the database down."""


@pytest_asyncio.fixture
async def db(stack: StackInfo) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session's provenance database, for checking what it holds."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


def own_settings(settings: Settings, uid: str, tmp_path: Path, **extra: Any) -> Settings:
    """The test's own provenance topic (hence indexer group), auth off, routes if given."""
    return settings.model_copy(
        update={
            "provenance_topic": f"ktb.provenance-{uid}",
            "api_auth": False,
            "routes_file": tmp_path / "no-routes.yaml",
            **extra,
        }
    )


async def test_two_replicas_racing_on_one_new_id_accept_it_once(
    services, topics, settings, uid, tmp_path
):
    s = own_settings(
        settings, uid, tmp_path, api_topics={"com.example.order.placed": topics["orders"]}
    )
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": f"race-{uid}",
            "type": "com.example.order.placed",
            "source": "tests",
            "partitionkey": f"o-{uid}",
            "data": order_data(f"o-{uid}"),
        }
    )
    # One partition for two replicas' indexers: one of them is assigned none.
    await ensure_topics(s, {s.provenance_topic: 1})
    async with (
        running_api(s) as first,
        running_api(s) as second,
        httpx.AsyncClient(timeout=30) as http,
    ):

        async def both_ready() -> bool:
            answers = [(await http.get(f"{url}/readyz")).json() for url in (first, second)]
            indexes = sorted(a["checks"]["provenance_index"] for a in answers)
            assert indexes in (["ok", "ok"], ["catching up", "ok"]), answers
            return indexes == ["ok", "ok"]

        await eventually(both_ready, 60)
        answers = await asyncio.gather(
            *(
                http.post(f"{url}/events", content=body, headers=CE_JSON)
                for url in [first, second] * 4
            )
        )
        assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
        assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 7

        async def same_on_both() -> dict[str, Any]:
            views = [(await http.get(f"{url}/events/race-{uid}")).json() for url in (first, second)]
            assert views[0]["produced"] is not None, views
            assert views[0] == views[1], views
            return views[0]

        view = await eventually(same_on_both)
        accepted = next(a.json() for a in answers if not a.json()["duplicate"])
        assert view["produced"] == accepted["produced"]
    assert sum((await services.end_offsets(topics["orders"])).values()) == 1
    [record] = await services.read(topics["orders"], 1)
    assert services.decode(record).id == f"race-{uid}"


def provenance_record(
    event_id: str, n: int, at: str, tenant: str, key: str, workflow_id: str | None = None
) -> bytes:
    """One provenance record of a skipped event, as a bridge writes it (or, naming
    ``workflow_id``, of a start)."""
    return json.dumps(
        vars(
            EventProvenance(
                event_id=event_id,
                event_type="t",
                tenant_id=tenant,
                key=key,
                topic="orders",
                partition=0,
                offset=n,
                route="r" if workflow_id else None,
                action="start" if workflow_id else None,
                outcome="started" if workflow_id else "skipped",
                workflow_id=workflow_id,
                run_id=None,
                detail=None,
                at=at,
                via="live",
            )
        )
    ).encode()


async def fill(
    settings: Settings,
    prefix: str,
    start: int,
    count: int,
    tenant: str = "acme",
    key: str = "k",
    workflow_id: str | None = None,
) -> None:
    """Append ``count`` provenance records of events ``<prefix>-<n>`` dated now."""
    now = datetime.now(UTC).isoformat()
    producer = kafka.producer(settings, linger_ms=20)
    await producer.start()
    try:
        for n in range(start, start + count):
            value = provenance_record(f"{prefix}-{n}", n, now, tenant, key, workflow_id)
            await producer.send(settings.provenance_topic, value, key=f"{prefix}-{n}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_listing_pages_through_one_tenants_records(settings, uid, tmp_path):
    keys = {"key-a": f"a-{uid}", "key-b": f"b-{uid}"}
    s = own_settings(
        settings, uid, tmp_path, api_auth=True, api_keys={hash_key(k): t for k, t in keys.items()}
    )
    await ensure_topics(s, {s.provenance_topic: 3})
    await fill(s, f"list-{uid}", 0, 3, tenant=f"a-{uid}", key=f"k-{uid}")
    await fill(s, f"list-{uid}", 3, 1, tenant=f"b-{uid}", key=f"k-{uid}")
    async with running_api(s) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}

        async def page(headers: dict[str, str], **params: Any) -> dict[str, Any]:
            response = await http.get("/events", params=params, headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        async def all_indexed() -> bool:
            theirs = (await page(b, key=f"k-{uid}"))["items"]
            return len((await page(a, key=f"k-{uid}"))["items"]) == 3 and len(theirs) == 1

        await eventually(all_indexed)
        first = await page(a, key=f"k-{uid}", page_size=2)
        second = await page(a, key=f"k-{uid}", page_size=2, page_token=first["next_page_token"])
        assert second["next_page_token"] is None
        listed = [item["event_id"] for item in first["items"] + second["items"]]
        assert sorted(listed) == [f"list-{uid}-{n}" for n in range(3)]
        assert {item["tenant_id"] for item in first["items"]} == {f"a-{uid}"}
        assert [i["event_id"] for i in (await page(b, key=f"k-{uid}"))["items"]] == [
            f"list-{uid}-3"
        ]
        # B's record is where it was read; A does not see it there.
        assert (await page(a, topic="orders", partition=0, offset=3, key=f"k-{uid}"))["items"] == []
        bad = await http.get("/events", params={"topic": "orders"}, headers=a)
        assert bad.status_code == 422
        forged = await http.get("/events", params={"page_token": "AQAAAAB4"}, headers=a)
        assert forged.status_code == 422


def start_indexer(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``ktb indexer`` as its own process (so it can be killed outright)."""
    env = dict(
        os.environ,
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_DATABASE_URL=settings.database_url.get_secret_value(),
        KTB_PROVENANCE_TOPIC=settings.provenance_topic,
        KTB_INDEXER_BATCH="100",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "indexer"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def test_indexer_killed_mid_batch_loses_and_doubles_nothing(settings, uid, tmp_path, db):
    s = own_settings(settings, uid, tmp_path)
    await ensure_topics(s, {s.provenance_topic: 3})
    prefix = f"kill-{uid}"
    counted = "SELECT count(*), count(DISTINCT event_id) FROM ktb_handlings WHERE event_id LIKE $1"

    async def indexed(expected: int) -> bool:
        total, distinct = await db.fetchrow(counted, f"{prefix}-%")
        assert total == distinct, (total, distinct)
        return bool(total == expected)

    await fill(s, prefix, 0, 500)
    indexer = start_indexer(s, tmp_path / "indexer.log")
    try:
        await eventually(lambda: indexed(500), 60)
        # Hold the indexer inside its next transaction, then kill it there.
        async with db.transaction():
            await db.execute("LOCK TABLE ktb_handlings IN SHARE MODE")
            await fill(s, prefix, 500, 1500)

            async def blocked() -> bool:
                waiting = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO ktb_handlings%'"
                )
                return bool(waiting)

            await eventually(blocked, 30)
            os.killpg(indexer.pid, signal.SIGKILL)
            indexer.wait(10)
        assert await indexed(500)
        indexer = start_indexer(s, tmp_path / "indexer.log")
        await eventually(lambda: indexed(2000), 60)
    finally:
        if indexer.poll() is None:
            os.killpg(indexer.pid, signal.SIGTERM)
            indexer.wait(30)


async def test_database_outage_answers_503_and_loses_nothing(
    stack, services, topics, settings, catalog, client, uid, tmp_path
):
    if stack.postgres is None:
        pytest.skip("the database is not this session's own (KTB_DATABASE_URL)")
    task_queue = f"outage-{uid}"
    config = routes_config(
        [
            {
                "name": "quick",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "action": "start",
                "workflow": "KtbApiTestQuick",
                "task_queue": task_queue,
                "workflow_id": f"outage-{uid}-{{data.order_id}}",
                "memo": {"outcome_topic": topics["outcomes"]},
            }
        ]
    )
    s = own_settings(settings, uid, tmp_path, routes_file=write_routes(tmp_path / "r.yaml", config))
    await ensure_topics(s, {s.provenance_topic: 3})
    postgres = stack.postgres
    async with (
        running_worker(s, catalog, client, task_queue, [QuickOrder], provenance=True),
        running_bridge(s, catalog, client, config, provenance=True),
        running_api(s) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        assert postgres.service is not None
        postgres.service.stop()
        down_at = time.monotonic()
        try:
            lookup = await http.get(f"/events/during-{uid}")
            assert lookup.status_code == 503, lookup.text
            assert lookup.json()["type"] == "urn:ktb:problem:database-unavailable"
            assert (await http.get("/readyz")).json()["checks"]["database"] == "unreachable"
            # The bridge's own path does not need the database.
            await services.produce(
                topics["orders"],
                "com.example.order.placed",
                order_data(f"d-{uid}"),
                key=f"d-{uid}",
                id=f"during-{uid}",
            )
            result = await workflow_result(client, f"outage-{uid}-d-{uid}")
            assert result["order_id"] == f"d-{uid}"

            async def paused() -> bool:
                return "ktb_indexer_paused 1.0" in (await http.get("/metrics")).text

            await eventually(paused, 30)
            # The outage lasts OUTAGE_S whatever the checks took: the indexer keeps
            # retrying its held batch, and a record arriving late in the outage joins it.
            await asyncio.sleep(max(0.0, OUTAGE_S - 5 - (time.monotonic() - down_at)))
            await services.produce(
                topics["orders"],
                "com.example.order.placed",
                order_data(f"late-{uid}"),
                key=f"late-{uid}",
                id=f"late-{uid}",
            )
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            assert (await http.get(f"/events/late-{uid}")).status_code == 503
        finally:
            postgres.start()
            await postgres.wait_ready()

        for event_id, order in ((f"during-{uid}", f"d-{uid}"), (f"late-{uid}", f"late-{uid}")):

            async def indexed(event_id: str = event_id) -> dict[str, Any]:
                response = await http.get(f"/events/{event_id}")
                assert response.status_code == 200, response.text
                assert response.json()["handlings"], response.text
                # The workflow's outcome is a provenance record of its own, indexed later.
                assert response.json()["published"], response.text
                return response.json()

            view = await eventually(indexed, 60)
            assert (view["outcome"], view["workflow_id"]) == ("started", f"outage-{uid}-{order}")
            assert len(view["handlings"]) == 1
            assert view["published"][0]["type"] == "com.example.order.completed"


async def test_retention_drops_whole_days(db, uid):
    today = datetime.now(UTC).date()
    old, kept = today - timedelta(days=40), today - timedelta(days=29)
    await partitions.ensure_days(db, [old, kept, today])
    long_ago = datetime.combine(old, datetime.min.time(), UTC)
    await db.execute(
        "INSERT INTO ktb_produced (event_id, at, type, topic) VALUES ($1, $2, 't', 'orders')",
        f"old-{uid}",
        long_ago,
    )
    dropped = await partitions.drop_expired(db, retention_days=30)
    assert set(dropped) >= {
        partitions.partition_name("ktb_handlings", old),
        partitions.partition_name("ktb_published", old),
    }
    days = await partitions.existing_days(db, "ktb_handlings")
    assert old not in days and {kept, today} <= days
    assert (
        await db.fetchval("SELECT count(*) FROM ktb_produced WHERE event_id = $1", f"old-{uid}")
        == 0
    )


async def test_a_record_naming_another_tenants_workflow_hides_it(settings, client, uid, tmp_path):
    """A record of tenant A that names B's workflow (written before the bridge checked
    targets' tenants): A's listing and A's event view show the record, not B's workflow."""
    keys = {"key-a": f"a-{uid}", "key-b": f"b-{uid}"}
    s = own_settings(
        settings, uid, tmp_path, api_auth=True, api_keys={hash_key(k): t for k, t in keys.items()}
    )
    theirs = f"theirs-{uid}"
    handle = await client.start_workflow(
        "NoWorkerRunsThis",
        id=theirs,
        task_queue=f"nobody-{uid}",
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(attributes.TENANT_ID, f"b-{uid}")]
        ),
    )
    try:
        await ensure_topics(s, {s.provenance_topic: 3})
        await fill(s, f"old-{uid}", 0, 1, tenant=f"a-{uid}", key=f"k-{uid}", workflow_id=theirs)
        async with running_api(s) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}

            async def listed() -> list[dict[str, Any]]:
                response = await http.get("/events", params={"key": f"k-{uid}"}, headers=a)
                assert response.status_code == 200, response.text
                return response.json()["items"]

            items = await eventually(listed)
            assert [i["event_id"] for i in items] == [f"old-{uid}-0"]
            assert (items[0]["workflow_id"], items[0]["run_id"]) == (None, None)
            by_workflow = await http.get("/events", params={"workflow_id": theirs}, headers=a)
            assert by_workflow.status_code == 200, by_workflow.text
            assert [i["workflow_id"] for i in by_workflow.json()["items"]] == [None]
            view = await http.get(f"/events/old-{uid}-0", headers=a)
            assert view.status_code == 200, view.text
            assert view.json()["workflow_id"] is None
            assert {h["workflow_id"] for h in view.json()["handlings"]} == {None}
            # B sees neither A's record nor, through it, anything.
            assert (await http.get(f"/events/old-{uid}-0", headers=b)).status_code == 404
            theirs_listed = await http.get("/events", params={"workflow_id": theirs}, headers=b)
            assert theirs_listed.json()["items"] == []
    finally:
        await handle.terminate()


async def test_an_id_is_taken_once_and_a_reservation_never_completed_is_taken_over(
    settings, db, uid
):
    async with Database(settings) as database:
        store = ProvenanceStore(database)
        held = Reservation(f"held-{uid}", "t", "acme", "k", "orders", None)
        taken = await asyncio.gather(*(store.reserve(held) for _ in range(8)))
        assert sum(earlier is None for earlier in taken) == 1, taken
        assert {earlier.offset for earlier in taken if earlier is not None} == {None}

        # Its replica died before producing: after STALE_RESERVATION, another takes it.
        age = "UPDATE ktb_produced SET at = at - $2::interval WHERE event_id = $1"
        await db.execute(age, held.event_id, timedelta(minutes=1))
        assert await store.reserve(replace(held, tenant_id="beta")) is not None
        await db.execute(age, held.event_id, STALE_RESERVATION)
        assert await store.reserve(replace(held, tenant_id="beta")) is None
        assert (await store.produced(held.event_id)).tenant_id == "beta"

        # Produced: never taken over, however old.
        await store.produced_at(replace(held, partition=0, offset=7))
        await db.execute(age, held.event_id, STALE_RESERVATION * 10)
        earlier = await store.reserve(replace(held, tenant_id="acme"))
        assert earlier is not None and (earlier.tenant_id, earlier.offset) == ("beta", 7)

        # An id the bridge handled (produced to Kafka some other way) is never taken.
        await store.write(
            batch_of(
                [
                    (
                        provenance_record(
                            f"seen-{uid}", 3, datetime.now(UTC).isoformat(), "acme", "k"
                        ),
                        0,
                        1,
                    )
                ],
                30,
            )
        )
        earlier = await store.reserve(Reservation(f"seen-{uid}", "t", "beta", "k", "orders", None))
        assert earlier is not None and (earlier.tenant_id, earlier.key) == ("acme", "k")
        assert await store.produced(f"seen-{uid}") is None


async def test_records_read_again_after_the_database_commit_change_nothing(settings, db, uid):
    # The indexer commits Kafka offsets after the database transaction: an indexer that
    # dies between the two reads the batch again, and writes it again.
    now = datetime.now(UTC).isoformat()
    records = [
        (provenance_record(f"again-{uid}-{n}", n, now, "acme", "k", f"wf-{uid}-{n}"), 0, n)
        for n in range(50)
    ]
    async with Database(settings) as database:
        store = ProvenanceStore(database)
        await store.write(batch_of(records, 30))
        before = await db.fetch(
            "SELECT * FROM ktb_handlings WHERE event_id LIKE $1 ORDER BY source_offset",
            f"again-{uid}-%",
        )
        await store.write(batch_of(records, 30))
        await store.write(batch_of(records[10:20], 30))
        after = await db.fetch(
            "SELECT * FROM ktb_handlings WHERE event_id LIKE $1 ORDER BY source_offset",
            f"again-{uid}-%",
        )
    assert len(before) == 50
    assert [dict(r) for r in after] == [dict(r) for r in before]


async def test_a_read_model_of_single_items_migrates_and_takes_batches(
    settings, db, uid, monkeypatch
):
    # A database at schema 1 (one item per record), with rows, is migrated to batches
    # of items: its rows keep their place (index 0) and a batch record's items are
    # each kept once, in order, however often the record is read.
    name = f"upgrade_{uid}".replace("-", "_")
    await db.execute(f'CREATE DATABASE "{name}"')
    url = settings.database_url.get_secret_value().rsplit("/", 1)[0] + "/" + name
    own = settings.model_copy(update={"database_url": SecretStr(url)})
    now = datetime.now(UTC).isoformat()
    try:
        async with Database(own) as database:
            async with database.connection() as conn:
                monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
                assert await migrations.migrate(conn) == [1]
                monkeypatch.undo()
                # A row as schema 1's indexer wrote it, in a day's partition of then.
                await partitions.ensure_days(conn, [partitions.day_of(datetime.now(UTC))])
                await conn.execute(
                    "INSERT INTO ktb_handlings (at, source_partition, source_offset, event_id, "
                    'tenant_id, topic, partition, "offset", outcome, via) '
                    "VALUES (now(), 0, 7, 'e-1', 'acme', 'orders', 0, 1, 'skipped', 'live')"
                )
                assert await migrations.migrate(conn) == [2]
            store = ProvenanceStore(database)
            items = [
                json.loads(provenance_record(event_id, n, now, "acme", "k", f"wf-{n}"))
                for n, event_id in enumerate(["e-2", "e-1", "e-2"], 2)
            ]
            batch = json.dumps({"kind": "batch", "items": items}).encode()
            for _ in range(2):
                await store.write(batch_of([(batch, 0, 8)], 30))
            e1 = await store.handlings("e-1")
            e2 = await store.handlings("e-2")
            async with database.connection() as conn:
                places = await conn.fetch(
                    "SELECT source_offset, source_index FROM ktb_handlings "
                    "ORDER BY source_offset, source_index"
                )
        assert [(r["source_offset"], r["source_index"]) for r in places] == [
            (7, 0), (8, 0), (8, 1), (8, 2)
        ]  # fmt: skip
        assert [(h.offset, h.outcome) for h in e1] == [(1, "skipped"), (3, "started")]
        assert [h.offset for h in e2] == [2, 4]
    finally:
        await db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
