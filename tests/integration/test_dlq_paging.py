"""``GET /dlq`` and ``ktb dlq list`` page by offset: bounded pages, a cursor, own letters."""

from __future__ import annotations

from typing import Any

import httpx

from bridge import dlq, kafka
from bridge.api.auth import hash_key
from bridge.codec import SchemaCatalog
from bridge.dlq import dead_letters, redrive
from bridge.envelope import encode_event
from bridge.settings import Settings
from tests.integration.dlq_support import create_topic, letter_headers
from tests.integration.test_dlq import ktb
from tests.integration.test_replay import PLACED
from tests.support import order_data, running_api

KEY_A = "paging-key-a"
KEY_B = "paging-key-b"
PER_TENANT = 30


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


async def write_letters(
    settings: Settings,
    catalog: SchemaCatalog,
    dlq_topic: str,
    orders: str,
    letters: list[tuple[str, int]],
) -> None:
    """One dead letter per (tenant, partition), ids ``<tenant>-<n>``, in this order."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sends = []
        for n, (tenant, partition) in enumerate(letters):
            record = encode_event(
                catalog, type=PLACED, data=order_data(f"o{n}"), id=f"{tenant}-{n}",
                source="tests", key=f"o{n}", tenant_id=tenant,
            )  # fmt: skip
            headers = letter_headers(record.headers, orders, 0, 5000 + n)
            sends.append(
                await producer.send(
                    dlq_topic, record.value, key=record.key, headers=headers, partition=partition
                )
            )
        for sent in sends:
            await sent
    finally:
        await producer.stop()


async def all_pages(
    http: httpx.AsyncClient, key: str, topic: str, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Every letter a caller sees, following the cursor; and the number of pages."""
    letters: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"topic": topic, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await http.get("/dlq", params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["letters"]) <= limit
        letters.extend(page["letters"])
        cursor = page["next_cursor"]
        if cursor is None:
            return letters, pages
        assert pages < 100, "the cursor does not move on"


async def test_dlq_listing_pages_with_a_cursor_and_shows_only_the_callers_letters(
    settings, catalog, uid
) -> None:
    orders = f"pg-{uid}"
    dlq_topic = orders + dlq.SUFFIX
    sparse = f"pgs-{uid}" + dlq.SUFFIX
    acme, globex = f"acme-{uid}", f"globex-{uid}"
    await create_topic(settings, orders, 2)
    await create_topic(settings, dlq_topic, 2)
    await create_topic(settings, sparse, 1)
    # Interleaved tenants on two partitions.
    mixed = [(acme if n % 2 else globex, n % 3 % 2) for n in range(2 * PER_TENANT)]
    await write_letters(settings, catalog, dlq_topic, orders, mixed)
    # Many letters of one tenant before a single letter of the other.
    await write_letters(settings, catalog, sparse, orders, [(globex, 0)] * 1200 + [(acme, 0)])
    settings = settings.model_copy(
        update={"api_keys": {hash_key(KEY_A): acme, hash_key(KEY_B): globex}}
    )

    async with running_api(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        seen, pages = await all_pages(http, KEY_A, dlq_topic, 7)
        ids = [x["event_id"] for x in seen]
        assert len(ids) == PER_TENANT == len(set(ids)) and pages >= PER_TENANT // 7
        assert all(i.startswith(acme + "-") for i in ids)
        theirs, _ = await all_pages(http, KEY_B, dlq_topic, 1000)
        assert len(theirs) == PER_TENANT
        assert all(x["event_id"].startswith(globex + "-") for x in theirs)
        # In DLQ order: partition by partition, offsets rising.
        places = [(x["partition"], x["offset"]) for x in seen]
        assert places == sorted(places)

        # A page reads a bounded part of the topic: few matches make a short page and a cursor.
        first = await http.get("/dlq", params={"topic": sparse}, headers=bearer(KEY_A))
        assert first.status_code == 200, first.text
        assert first.json()["letters"] == [] and first.json()["next_cursor"]
        found, _ = await all_pages(http, KEY_A, sparse, 100)
        assert [x["event_id"] for x in found] == [f"{acme}-1200"]

        for params, message in [
            ({"topic": dlq_topic, "cursor": first.json()["next_cursor"]}, "belongs to"),
            ({"topic": dlq_topic, "cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
            ({"topic": dlq_topic, "limit": 0}, ""),
            ({"topic": dlq_topic, "limit": 1001}, ""),
        ]:
            bad = await http.get("/dlq", params=params, headers=bearer(KEY_A))
            assert bad.status_code == 422, (params, bad.text)
            assert message in bad.text

        # A redrive of "everything" goes page by page and stays within the tenant.
        report = await redrive(settings, dlq_topic, tenant=acme, chunk=4)
        assert report.selected == PER_TENANT and len(report.redriven) == PER_TENANT
        seen, _ = await all_pages(http, KEY_A, dlq_topic, 7)
        assert all(x["redriven"] is not None for x in seen)
        theirs, _ = await all_pages(http, KEY_B, dlq_topic, 1000)
        assert all(x["redriven"] is None for x in theirs)
        nothing = await http.post("/dlq/redrive", json={"topic": dlq_topic}, headers=bearer(KEY_A))
        assert nothing.status_code == 200, nothing.text
        assert nothing.json()["redriven"] == [] and len(nothing.json()["already_redriven"]) == 30

    # `ktb dlq list` pages through everything.
    code, out, err = await ktb(settings, "dlq", "list", dlq_topic, "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 2 * PER_TENANT
    assert len(await dead_letters(settings, sparse)) == 1201
