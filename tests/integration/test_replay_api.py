"""``POST /replays``, ``GET /replays/{id}``, ``GET /dlq`` and ``POST /dlq/redrive`` over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from bridge.api.auth import hash_key
from bridge.replay import REPLAY_RUNNER, ReplayActivities, ReplayWorkflow
from bridge.settings import Settings
from tests.integration.test_replay import PLACED, exists, start_route
from tests.support import (
    eventually,
    order_data,
    routes_config,
    running_api,
    topic_exists,
    write_routes,
)

KEY_A = "replay-key-a"
KEY_B = "replay-key-b"


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def replay_worker(settings: Settings, client: Client) -> AsyncIterator[None]:
    """An in-process replay worker on the test's own task queue."""
    activities = ReplayActivities(settings, client)
    async with Worker(
        client,
        task_queue=settings.replay_task_queue,
        workflows=[ReplayWorkflow],
        activities=[activities.replay_range],
        workflow_runner=REPLAY_RUNNER,
    ):
        yield


async def finished(http: httpx.AsyncClient, replay_id: str, key: str) -> dict[str, Any]:
    """Wait for a replay to complete; return its view."""

    async def completed() -> dict[str, Any] | None:
        response = await http.get(f"/replays/{replay_id}", headers=bearer(key))
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        assert view["state"] in ("running", "completed"), view
        return view if view["state"] == "completed" else None

    view: dict[str, Any] = await eventually(completed, timeout=60, interval=0.3)
    return view


async def test_replays_and_dead_letters_over_http_per_tenant(
    services, topics, settings, client, uid, tmp_path
) -> None:
    orders = topics["orders"]
    prefix = f"ra-{uid}-"
    tenant_a, tenant_b = f"a-{uid}", f"b-{uid}"
    config = routes_config([start_route(f"api-{uid}", orders, f"none-{uid}", prefix)])
    settings = settings.model_copy(
        update={
            "routes_file": write_routes(tmp_path / "routes.yaml", config),
            "provenance_topic": f"ktb.provenance-{uid}",
            "replay_task_queue": f"ktb-replay-{uid}",
            "replay_progress_interval_s": 0.2,
            "api_keys": {hash_key(KEY_A): tenant_a, hash_key(KEY_B): tenant_b},
        }
    )
    for n in range(3):
        await services.produce(orders, PLACED, order_data(f"a{n}"), key=f"a{n}", tenant=tenant_a)
    await services.produce(orders, PLACED, order_data("b0"), key="b0", tenant=tenant_b)
    # No route takes payments: with `unmatched: dead_letter` a replay dead-letters it.
    payment = {"order_id": "a0", "payment_id": "p-1", "amount_cents": 2500}
    await services.produce(orders, "com.example.payment.confirmed", payment, key="a0",
                           tenant=tenant_a)  # fmt: skip

    async with (
        replay_worker(settings, client),
        running_api(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        body = {"topic": orders, "from": "earliest", "dry_run": True, "mode": "fresh"}
        accepted = await http.post("/replays", json=body, headers=bearer(KEY_A))
        assert accepted.status_code == 202, accepted.text
        dry_id = accepted.json()["replay_id"]
        assert accepted.json()["status_url"] == f"/replays/{dry_id}"
        assert accepted.json()["total"] == 5 and accepted.json()["generation"]
        view = await finished(http, dry_id, KEY_A)
        report = view["report"]
        # Only tenant A's events: three orders a route would start, one dead letter.
        assert (report["read"], report["would_act"], report["dead_lettered"]) == (4, 3, 1)
        assert report["started"] == 0 and view["dry_run"] is True
        assert not await exists(client, f"{tenant_a}:{prefix}a0-replay-{view['generation']}")

        other = await http.get(f"/replays/{dry_id}", headers=bearer(KEY_B))
        assert other.status_code == 404
        assert other.headers["content-type"] == "application/problem+json"

        accepted = await http.post(
            "/replays", json={"topic": orders, "from": "0"}, headers=bearer(KEY_A)
        )
        assert accepted.status_code == 202, accepted.text
        view = await finished(http, accepted.json()["replay_id"], KEY_A)
        report = view["report"]
        assert (report["read"], report["dead_lettered"]) == (4, 1)
        assert report["started"] + report["duplicates"] == 3 and report["started"] > 0
        assert view["done"] == view["total"] == 5
        assert await exists(client, f"{tenant_a}:{prefix}a2")
        assert not await exists(client, f"{tenant_b}:{prefix}b0")

        bad = await http.post(
            "/replays", json={"topic": orders, "from": "9", "to": "3"}, headers=bearer(KEY_A)
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert "is after --to" in bad.json()["detail"]
        missing = await http.post(
            "/replays", json={"topic": f"nope-{uid}", "from": "0"}, headers=bearer(KEY_A)
        )
        assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]
        no_dlq = await http.get("/dlq", params={"topic": f"nope-{uid}.dlq"}, headers=bearer(KEY_A))
        assert no_dlq.status_code == 422 and "does not exist" in no_dlq.json()["detail"]
        assert not await topic_exists(settings, f"nope-{uid}")  # asking created nothing
        assert not await topic_exists(settings, f"nope-{uid}.dlq")

        dlq_topic = orders + ".dlq"
        page = await http.get("/dlq", params={"topic": dlq_topic}, headers=bearer(KEY_A))
        assert page.status_code == 200, page.text
        letters = page.json()["letters"]
        assert len(letters) == 1
        assert letters[0]["error_type"] == "unmatched"
        assert letters[0]["original_topic"] == orders and letters[0]["redriven"] is None
        assert letters[0]["event_type"] == "com.example.payment.confirmed"
        others = await http.get("/dlq", params={"topic": dlq_topic}, headers=bearer(KEY_B))
        assert others.status_code == 200 and others.json()["letters"] == []

        redriven = await http.post("/dlq/redrive", json={"topic": dlq_topic}, headers=bearer(KEY_A))
        assert redriven.status_code == 200, redriven.text
        assert redriven.json()["selected"] == 1
        (mark,) = redriven.json()["redriven"]
        assert mark["topic"] == orders and mark["redrive_count"] == 1
        page = await http.get("/dlq", params={"topic": dlq_topic}, headers=bearer(KEY_A))
        assert page.json()["letters"][0]["redriven"]["offset"] == mark["offset"]
        nothing = await http.post("/dlq/redrive", json={"topic": dlq_topic}, headers=bearer(KEY_B))
        assert nothing.json()["selected"] == 0
