"""Failure policies against real Kafka and Temporal.

``park_key``: a record of key ``k`` that cannot be acted on is dead-lettered and the
later records of ``k`` are parked in ``<topic>.parked`` while other keys go on;
discarding or redriving the letter releases them in offset order (their workflows
start in that order). The parking holds across a kill -9 of the bridge and across
the partition moving to another bridge. ``pause``: the partition stops at the
failing record until ``resume`` tries it again or ``resume --skip`` dead-letters it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from bridge.codec import SchemaCatalog
from bridge.dlq import LetterRef, redrive
from bridge.kafka import ensure_topics
from bridge.policies import discard, list_parked, parked_counts, paused_partitions
from bridge.routes import RoutesConfig
from bridge.settings import Settings
from tests.integration.test_api import KEY_A, KEY_B, api_settings, bearer
from tests.integration.test_dlq import ktb
from tests.support import (
    Services,
    bridge_process,
    eventually,
    order_data,
    routes_config,
    running_api,
    running_bridge,
    running_worker,
    write_routes,
)
from tests.workflows import Noop

PLACED = "com.example.order.placed"
CANCELLED = "com.example.order.cancelled"


def routes(
    topic: str, uid: str, on_failure: str = "park_key", cancel: bool = False
) -> RoutesConfig:
    specs: list[dict[str, Any]] = [
        {
            "name": f"start-{uid}", "topic": topic, "type": PLACED, "action": "start",
            "workflow": "KtbTestNoop", "task_queue": f"tq-{uid}",
            "workflow_id": f"wf-{uid}-{{data.order_id}}", "on_failure": on_failure,
        }
    ]  # fmt: skip
    if cancel:
        specs.append({
            "name": f"cancel-{uid}", "topic": topic, "type": CANCELLED, "action": "start",
            "workflow": "KtbTestNoop", "task_queue": f"tq-{uid}",
            "workflow_id": f"wf-{uid}-cancel-{{data.order_id}}", "on_failure": on_failure,
        })  # fmt: skip
    return routes_config(specs, unmatched="dead_letter")


async def one_partition(settings: Settings, uid: str) -> str:
    topic = f"park-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    return topic


async def poison(services: Services, topic: str, key: str, tenant: str | None = None) -> None:
    """A record that does not decode: its route cannot be known."""
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", f"poison-{key}".encode()),
        ("ce_source", b"tests"), ("ce_type", PLACED.encode()),
        ("content-type", b"application/avro"),
    ]  # fmt: skip
    if tenant is not None:
        headers.append(("ce_tenantid", tenant.encode()))
    await services.produce_raw(topic, b"not avro at all", headers, key=key.encode())


async def place(services: Services, topic: str, key: str, order_id: str) -> None:
    await services.produce(topic, PLACED, order_data(order_id), key=key)


async def start_times(client: Client, ids: list[str]) -> list[datetime] | None:
    """When each workflow started; None while one of them does not exist."""
    times = []
    for workflow_id in ids:
        try:
            times.append((await client.get_workflow_handle(workflow_id).describe()).start_time)
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return None
            raise
    return times


async def exists(client: Client, workflow_id: str) -> bool:
    return await start_times(client, [workflow_id]) is not None


async def at_end(services: Services, topic: str) -> bool:
    return await services.committed(topic) == await services.end_offsets(topic)


async def parked_offsets(settings: Settings, topic: str) -> list[int]:
    return [r["offset"] for r in await list_parked(settings, topic)]


async def in_order(client: Client, ids: list[str]) -> None:
    """Every one of ``ids`` started, in that order."""

    async def started() -> list[datetime] | None:
        return await start_times(client, ids)

    times = await eventually(started, timeout=60)
    assert times is not None
    assert times == sorted(times), list(zip(ids, times, strict=True))


async def park_three(
    services: Services, settings: Settings, client: Client, topic: str, uid: str
) -> list[str]:
    """A poison record of ``k`` then three of ``k`` and one of another key: the three
    are parked, the other key's workflow starts. Returns ``k``'s workflow ids."""
    await poison(services, topic, "k")
    ids = []
    for n in range(3):
        await place(services, topic, "k", f"k{n}")
        ids.append(f"wf-{uid}-k{n}")
    await place(services, topic, "o", "o0")
    await eventually(lambda: exists(client, f"wf-{uid}-o0"), timeout=60)
    await eventually(lambda: at_end(services, topic), timeout=60)

    async def three() -> bool:
        return await parked_offsets(settings, topic) == [1, 2, 3]

    await eventually(three, timeout=30)
    assert await start_times(client, ids[:1]) is None
    return ids


async def test_a_parked_key_is_released_in_order_when_its_letter_is_discarded(
    services: Services, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    topic = await one_partition(settings, uid)
    config = routes(topic, uid)
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config),
    ):
        ids = await park_three(services, settings, client, topic, uid)
        assert await parked_counts(settings, f"{topic}.dlq") == {"0:0": 3}
        report = await discard(settings, f"{topic}.dlq", [LetterRef(0, 0)])
        assert [r["letter"] for r in report.released] == ["0:0"]
        await in_order(client, ids)

        async def nothing_parked() -> bool:
            return await list_parked(settings, topic) == []

        await eventually(nothing_parked, timeout=30)
        await place(services, topic, "k", "k3")  # the key flows live again
        await eventually(lambda: exists(client, f"wf-{uid}-k3"), timeout=60)


async def test_a_parked_key_is_released_in_order_when_its_letter_is_redriven_after_a_fix(
    services: Services, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    topic = await one_partition(settings, uid)
    async with running_worker(settings, catalog, client, f"tq-{uid}", [Noop]):
        async with running_bridge(settings, catalog, client, routes(topic, uid)):
            # No route takes a cancellation yet: it is dead-lettered and blocks k.
            await services.produce(topic, CANCELLED, {"order_id": "c", "reason": "x"}, key="k")
            ids = []
            for n in range(3):
                await place(services, topic, "k", f"k{n}")
                ids.append(f"wf-{uid}-k{n}")
            await eventually(lambda: at_end(services, topic), timeout=60)

            async def three() -> bool:
                return len(await parked_offsets(settings, topic)) == 3

            await eventually(three, timeout=30)
            assert await start_times(client, ids[:1]) is None
        fixed = routes(topic, uid, cancel=True)
        async with running_bridge(settings, catalog, client, fixed):
            report = await redrive(settings, f"{topic}.dlq", refs=[LetterRef(0, 0)])
            assert len(report.redriven) == 1
            await in_order(client, [f"wf-{uid}-cancel-c", *ids])


async def test_a_parked_key_stays_parked_across_a_kill_9_of_the_bridge(
    services: Services,
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    uid: str,
    tmp_path: Path,
) -> None:
    topic = await one_partition(settings, uid)
    routes_file = write_routes(tmp_path / "routes.yaml", routes(topic, uid))
    log_file = tmp_path / "bridge.log"
    async with running_worker(settings, catalog, client, f"tq-{uid}", [Noop]):
        proc = bridge_process(settings, routes_file, log_file)
        try:
            ids = await park_three(services, settings, client, topic, uid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            await place(services, topic, "k", "k3")
            await place(services, topic, "o", "o1")
            ids.append(f"wf-{uid}-k3")
            proc = bridge_process(settings, routes_file, log_file)
            await eventually(lambda: exists(client, f"wf-{uid}-o1"), timeout=60)
            await eventually(lambda: at_end(services, topic), timeout=60)
            code, out, err = await ktb(settings, "parked", "list", topic, "--json")
            assert code == 0, err
            listed = [json.loads(line) for line in out.splitlines()]
            assert [(r["offset"], r["key"], r["blocked_by"]) for r in listed] == [
                (offset, "k", f"{topic}.dlq:0:0") for offset in (1, 2, 3, 5)
            ]
            assert await start_times(client, ids[:1]) is None
            code, out, err = await ktb(settings, "dlq", "list", f"{topic}.dlq")
            assert code == 0 and "[holds 4 parked]" in out, (out, err)
            code, out, err = await ktb(settings, "dlq", "discard", f"{topic}.dlq", "--offsets", "0")
            assert code == 0 and "1 keys released" in out, (out, err)
            await in_order(client, ids)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) in (0, -signal.SIGKILL), log_file.read_text()[-3000:]


async def test_a_parked_key_stays_parked_when_its_partition_moves_to_another_bridge(
    services: Services, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    topic = await one_partition(settings, uid)
    config = routes(topic, uid)
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config) as first,
    ):
        ids = await park_three(services, settings, client, topic, uid)
        async with running_bridge(settings, catalog, client, config) as second:
            # The first leaves: the partition moves to the second by a rebalance.
            first.stop()
            await eventually(lambda: _holds(second), timeout=60)
            await place(services, topic, "k", "k3")
            await place(services, topic, "o", "o1")
            ids.append(f"wf-{uid}-k3")
            await eventually(lambda: exists(client, f"wf-{uid}-o1"), timeout=60)
            await eventually(lambda: at_end(services, topic), timeout=60)
            assert await parked_offsets(settings, topic) == [1, 2, 3, 5]
            assert await start_times(client, ids[:1]) is None
            await discard(settings, f"{topic}.dlq", [LetterRef(0, 0)])
            await in_order(client, ids)


async def _holds(consumer: Any) -> bool:
    return len(consumer.partitions) == 1


async def test_a_paused_partition_waits_for_resume_and_resume_skip(
    services: Services, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    topic = await one_partition(settings, uid)
    config = routes(topic, uid, on_failure="pause")
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config),
        running_api(settings.model_copy(update={"api_auth": False})) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        await poison(services, topic, "k")
        await place(services, topic, "j", "j0")

        async def paused() -> Any:
            found = [p for p in await paused_partitions(settings) if p.topic == topic]
            return found[0] if found and found[0].decision is None else None

        first = await eventually(paused, timeout=60)
        assert (first.partition, first.offset) == (0, 0)
        assert await start_times(client, [f"wf-{uid}-j0"]) is None
        ready = (await http.get("/readyz")).json()
        assert {"topic": topic, "partition": 0, "offset": 0} in [
            {k: p[k] for k in ("topic", "partition", "offset")} for p in ready["paused"]
        ]

        # Tried again: it fails again and pauses again.
        answer = await http.post("/bridge/resume", json={"topic": topic, "partition": 0})
        assert answer.status_code == 200 and answer.json()["decision"] == "retry", answer.text

        async def paused_again() -> bool:
            again = await paused()
            return again is not None and again.paused_at > first.paused_at

        await eventually(paused_again, timeout=60)
        assert await start_times(client, [f"wf-{uid}-j0"]) is None

        code, out, err = await ktb(settings, "bridge", "resume", topic, "0", "--skip")
        assert code == 0 and "skip requested" in out, (out, err)
        await eventually(lambda: exists(client, f"wf-{uid}-j0"), timeout=60)
        await eventually(lambda: at_end(services, topic), timeout=60)
        letters = await services.read(f"{topic}.dlq", 1)
        assert letters[0].key == b"k"
        assert [p for p in await paused_partitions(settings) if p.topic == topic] == []
        refused = await http.post("/bridge/resume", json={"topic": topic, "partition": 0})
        assert refused.status_code == 422  # not paused any more


@contextlib.asynccontextmanager
async def two_tenants(
    settings: Settings, catalog: SchemaCatalog, client: Client, config: RoutesConfig, uid: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A worker, a bridge and the API on ``config``; HTTP clients of tenants A and B."""
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config),
        running_api(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(KEY_A)) as a,
        httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(KEY_B)) as b,
    ):
        yield a, b


async def test_through_the_api_a_tenant_lists_and_discards_only_its_own(
    services: Services,
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    uid: str,
    tmp_path: Path,
) -> None:
    topic = await one_partition(settings, uid)
    config = routes(topic, uid)
    settings = api_settings(settings, uid, tmp_path, config)
    tenant = f"a-{uid}"
    async with two_tenants(settings, catalog, client, config, uid) as (a, b):
        await poison(services, topic, "k", tenant)
        ids = []
        for n in range(2):
            await services.produce(topic, PLACED, order_data(f"k{n}"), key="k", tenant=tenant)
            ids.append(f"{tenant}:wf-{uid}-k{n}")
        await eventually(lambda: at_end(services, topic), timeout=60)

        async def two_parked() -> list[Any]:
            records = (await a.get("/parked", params={"topic": topic})).json()["records"]
            return records if len(records) == 2 else []

        parked = await eventually(two_parked, timeout=30)
        assert [(r["offset"], r["blocked_by"]) for r in parked] == [
            (1, f"{topic}.dlq:0:0"), (2, f"{topic}.dlq:0:0")
        ]  # fmt: skip
        assert (await b.get("/parked", params={"topic": topic})).json()["records"] == []
        letters = (await a.get("/dlq", params={"topic": f"{topic}.dlq"})).json()["letters"]
        assert [(x["offset"], x["parked"]) for x in letters] == [(0, 2)]

        body = {"topic": f"{topic}.dlq", "offsets": ["0:0"]}
        assert (await b.post("/dlq/discard", json=body)).status_code == 422
        assert await start_times(client, ids[:1]) is None
        answer = await a.post("/dlq/discard", json=body)
        assert answer.status_code == 200, answer.text
        assert [r["letter"] for r in answer.json()["released"]] == ["0:0"]
        await in_order(client, ids)


async def test_through_the_api_a_tenant_resumes_only_its_own_pause(
    services: Services,
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    uid: str,
    tmp_path: Path,
) -> None:
    topic = await one_partition(settings, uid)
    config = routes(topic, uid, on_failure="pause")
    settings = api_settings(settings, uid, tmp_path, config)
    tenant = f"a-{uid}"
    async with two_tenants(settings, catalog, client, config, uid) as (a, b):
        await poison(services, topic, "k", tenant)
        await services.produce(topic, PLACED, order_data("j0"), key="j", tenant=tenant)

        async def paused() -> bool:
            return any(p.topic == topic for p in await paused_partitions(settings))

        await eventually(paused, timeout=60)
        body = {"topic": topic, "partition": 0, "skip": True}
        refused = await b.post("/bridge/resume", json=body)
        assert refused.status_code == 422, refused.text
        assert await start_times(client, [f"{tenant}:wf-{uid}-j0"]) is None
        answer = await a.post("/bridge/resume", json=body)
        assert answer.status_code == 200 and answer.json()["decision"] == "skip", answer.text
        await eventually(lambda: exists(client, f"{tenant}:wf-{uid}-j0"), timeout=60)
        await eventually(lambda: at_end(services, topic), timeout=60)
        assert [
            x["offset"]
            for x in (await a.get("/dlq", params={"topic": f"{topic}.dlq"})).json()["letters"]
        ] == [0]
        assert (await b.get("/dlq", params={"topic": f"{topic}.dlq"})).json()["letters"] == []
