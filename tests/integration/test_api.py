"""The HTTP API end to end: real Kafka, Temporal, an in-process bridge, worker and API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bridge.api.auth import hash_key
from bridge.codec import SchemaCatalog
from bridge.kafka import ensure_topics
from bridge.routes import RoutesConfig
from bridge.settings import Settings
from tests.integration.api_workflows import PaidOrder, QuickOrder
from tests.support import (
    eventually,
    order_data,
    routes_config,
    running_api,
    running_bridge,
    running_worker,
    write_routes,
)

CE_JSON = {"Content-Type": "application/cloudevents+json"}
KEY_A = "key-tenant-a"
KEY_B = "key-tenant-b"


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


def api_settings(settings: Settings, uid: str, tmp_path: Path, config: RoutesConfig) -> Settings:
    """Settings of one test's bridge, worker and API: own provenance topic, routes, keys."""
    return settings.model_copy(
        update={
            "provenance_topic": f"ktb.provenance-{uid}",
            "routes_file": write_routes(tmp_path / "routes.yaml", config),
            "api_auth": True,
            "api_keys": {hash_key(KEY_A): f"a-{uid}", hash_key(KEY_B): f"b-{uid}"},
            "api_stream_interval_s": 0.1,
        }
    )


@contextlib.asynccontextmanager
async def api_stack(
    settings: Settings, config: RoutesConfig, catalog: SchemaCatalog, client: Any, task_queue: str
) -> AsyncIterator[str]:
    """Worker and bridge (both recording provenance) and the API; yields the API's URL."""
    await ensure_topics(settings, {settings.provenance_topic: 3})
    async with (
        running_worker(
            settings, catalog, client, task_queue, [PaidOrder, QuickOrder], provenance=True
        ),
        running_bridge(settings, catalog, client, config, provenance=True),
        running_api(settings) as url,
    ):
        yield url


def structured(event_id: str, type: str, data: dict[str, Any], key: str, **extra: Any) -> bytes:
    """A structured-mode CloudEvent body."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": type,
            "source": "tests",
            "partitionkey": key,
            "data": data,
            **extra,
        }
    ).encode()


async def follow(http: httpx.AsyncClient, stream_url: str, states: list[dict[str, Any]]) -> None:
    """Read a process stream to its end, appending every `state` message to ``states``."""

    async def exists() -> bool:
        return (await http.get(stream_url.removesuffix("/stream"))).status_code == 200

    await eventually(exists)
    async with http.stream("GET", stream_url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert kind == "state", line
                states.append(json.loads(line.removeprefix("data: ")))


async def test_produce_stream_signal_wait_and_provenance(
    services, topics, settings, catalog, client, uid, tmp_path
):
    task_queue = f"api-{uid}"
    workflow_template = f"api-{uid}-{{data.order_id}}"
    config = routes_config(
        [
            {
                "name": "start",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "when": "data.total_cents > 0",
                "action": "start",
                "workflow": "KtbApiTestOrder",
                "task_queue": task_queue,
                "workflow_id": workflow_template,
                "memo": {
                    "outcome_topic": topics["outcomes"],
                    "compensation_topic": topics["compensations"],
                },
            },
            {
                "name": "paid",
                "topic": topics["payments"],
                "type": "com.example.payment.confirmed",
                "action": "signal",
                "workflow_id": workflow_template,
                "signal": "payment_confirmed",
            },
        ]
    )
    s = api_settings(settings, uid, tmp_path, config)
    order_id = f"o-{uid}"
    workflow_id = f"a-{uid}:api-{uid}-{order_id}"  # scoped by the tenant of KEY_A
    async with (
        api_stack(s, config, catalog, client, task_queue) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as http,
    ):
        placed = await http.post(
            "/events",
            content=structured(
                f"placed-{uid}", "com.example.order.placed", order_data(order_id), order_id
            ),
            headers=CE_JSON,
        )
        assert placed.status_code == 202, placed.text
        accepted = placed.json()
        assert accepted["operation_id"] == f"placed-{uid}"
        assert accepted["duplicate"] is False
        assert accepted["tenant_id"] == f"a-{uid}"
        assert accepted["workflow_id"] == workflow_id
        assert accepted["produced"]["topic"] == topics["orders"]
        assert accepted["stream_url"] == f"/processes/{workflow_id}/stream"
        assert placed.headers["location"] == f"/events/placed-{uid}"

        states: list[dict[str, Any]] = []
        stream = asyncio.create_task(follow(http, accepted["stream_url"], states))

        async def awaiting_payment() -> bool:
            return any(
                (st.get("progress") or {}).get("step") == "awaiting_payment" for st in states
            )

        await eventually(awaiting_payment)
        # Binary mode: attributes in ce-* headers, the data is the body.
        paid = await http.post(
            "/events?wait=30",
            json={"order_id": order_id, "payment_id": f"pay-{uid}", "amount_cents": 2500},
            headers={
                "ce-specversion": "1.0",
                "ce-id": f"paid-{uid}",
                "ce-source": "tests",
                "ce-type": "com.example.payment.confirmed",
                "ce-partitionkey": order_id,
            },
        )
        assert paid.status_code == 200, paid.text
        settled = paid.json()
        assert settled["status"] == "completed"
        assert settled["workflow_id"] == workflow_id
        assert settled["result"] == {"status": "completed", "payment_id": f"pay-{uid}"}
        assert settled["produced"]["topic"] == topics["payments"]

        await asyncio.wait_for(stream, 30)
        assert states[0]["status"] == "running"
        assert states[-1]["status"] == "completed"
        assert states[-1]["result"]["payment_id"] == f"pay-{uid}"
        waiting = {"step": "awaiting_payment", "order_id": order_id}
        assert any(st["progress"] == waiting for st in states if st["status"] == "running")

        async def provenance() -> dict[str, Any]:
            view = (await http.get(f"/events/placed-{uid}")).json()
            assert view["published"], view
            return view

        view = await eventually(provenance)
        assert view["status"] == "completed"
        assert view["read"] == accepted["produced"]
        assert view["produced"] == accepted["produced"]
        assert (view["route"], view["action"], view["outcome"]) == ("start", "start", "started")
        assert view["workflow_id"] == workflow_id
        assert view["run_id"] == settled["run_id"] == view["process"]["run_id"]
        assert view["tenant_id"] == f"a-{uid}"
        assert view["key"] == order_id
        [outcome] = view["published"]
        records = await services.read(topics["outcomes"], 1)
        assert len(records) == 1
        assert outcome["ce_id"] == services.decode(records[0]).id
        assert (outcome["type"], outcome["kind"]) == ("com.example.order.completed", "outcome")
        assert (outcome["topic"], outcome["offset"]) == (topics["outcomes"], records[0].offset)

        process = (await http.get(f"/processes/{workflow_id}")).json()
        assert process["status"] == "completed"
        assert process["workflow_type"] == "KtbApiTestOrder"
        assert process["result"]["payment_id"] == f"pay-{uid}"
        assert process["trigger"]["event_id"] == f"placed-{uid}"
        assert process["published"] == view["published"]
        assert process["compensations"] == []
        assert process["progress"] is None

        listing = (await http.get("/processes", params={"key": order_id})).json()
        assert [p["workflow_id"] for p in listing["items"]] == [workflow_id]

        # A short payment: the workflow publishes a compensation and fails.
        short_id = f"s-{uid}"
        short = await http.post(
            "/events",
            content=structured(
                f"placed2-{uid}", "com.example.order.placed", order_data(short_id), short_id
            ),
            headers=CE_JSON,
        )
        assert short.status_code == 202, short.text

        # Orders and payments are different topics: pay once the process exists.
        async def started() -> bool:
            response = await http.get(f"/processes/a-{uid}:api-{uid}-{short_id}")
            return response.status_code == 200

        await eventually(started)
        failed = await http.post(
            "/events?wait=30",
            content=structured(
                f"paid2-{uid}",
                "com.example.payment.confirmed",
                {"order_id": short_id, "payment_id": f"pay2-{uid}", "amount_cents": 1},
                short_id,
            ),
            headers=CE_JSON,
        )
        assert failed.status_code == 200, failed.text
        assert failed.json()["status"] == "failed"
        assert failed.json()["failure"] == {
            "message": "payment short of the total",
            "type": "PaymentShort",
        }

        async def compensated() -> dict[str, Any]:
            process = (await http.get(f"/processes/a-{uid}:api-{uid}-{short_id}")).json()
            assert process["compensations"], process
            return process

        process = await eventually(compensated)
        assert process["status"] == "failed"
        assert process["failure"]["type"] == "PaymentShort"
        [refund] = process["compensations"]
        assert (refund["type"], refund["kind"], refund["topic"]) == (
            "com.example.order.step_compensated",
            "compensation",
            topics["compensations"],
        )
        assert process["published"] == [refund]
        short_view = (await http.get(f"/events/placed2-{uid}")).json()
        assert short_view["status"] == "failed"
        assert short_view["published"] == [refund]

        # Listing: the tenant's processes, filtered by status and type, one per page.
        failed_id = f"a-{uid}:api-{uid}-{short_id}"

        async def listed(**params: Any) -> list[str]:
            page = (await http.get("/processes", params=params)).json()
            return [p["workflow_id"] for p in page["items"]]

        async def both_closed() -> bool:
            done = await listed(type="KtbApiTestOrder", status="completed")
            failed = await listed(type="KtbApiTestOrder", status="failed")
            assert (done, failed) == ([workflow_id], [failed_id])
            return True

        await eventually(both_closed)
        first = (await http.get("/processes", params={"page_size": 1})).json()
        assert len(first["items"]) == 1 and first["next_page_token"]
        second = (
            await http.get(
                "/processes", params={"page_size": 1, "page_token": first["next_page_token"]}
            )
        ).json()
        pages = {first["items"][0]["workflow_id"], second["items"][0]["workflow_id"]}
        assert pages == {workflow_id, failed_id}

        metrics = (await http.get("/metrics")).text
        assert f'ktb_api_events_produced_total{{topic="{topics["orders"]}"}} 2.0' in metrics

    # A second API replica answers the same from the shared read model.
    async with (
        running_api(s) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as http,
    ):

        async def rebuilt() -> dict[str, Any]:
            again = (await http.get(f"/events/placed-{uid}")).json()
            assert again.get("published"), again
            return again

        again = await eventually(rebuilt)
        assert again["read"] == view["read"]
        assert again["published"] == view["published"]
        assert again["produced"] == view["produced"]


async def test_wait_duplicates_dead_letters_and_tenants(
    services, topics, settings, catalog, client, uid, tmp_path
):
    task_queue = f"api-{uid}"
    config = routes_config(
        [
            {
                "name": "quick",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "when": "data.total_cents > 0",
                "action": "start",
                "workflow": "KtbApiTestQuick",
                "task_queue": task_queue,
                "workflow_id": f"quick-{uid}-{{data.order_id}}",
                "memo": {"outcome_topic": topics["outcomes"]},
            },
        ]
    )
    s = api_settings(settings, uid, tmp_path, config)
    order_id = f"o-{uid}"
    workflow_id = f"a-{uid}:quick-{uid}-{order_id}"
    event = structured(f"e1-{uid}", "com.example.order.placed", order_data(order_id), order_id)
    async with (
        api_stack(s, config, catalog, client, task_queue) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as a,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_B), timeout=30) as b,
    ):
        first = await a.post("/events?wait=30", content=event, headers=CE_JSON)
        assert first.status_code == 200, first.text
        done = first.json()
        assert done["status"] == "completed"
        assert done["duplicate"] is False
        assert done["result"]["order_id"] == order_id

        # The same event id again: not produced twice, answered from the first one.
        again = await a.post("/events?wait=30", content=event, headers=CE_JSON)
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] is True
        assert again.json()["result"] == done["result"]

        # No route matches a zero total and unmatched events are dead-lettered.
        zero = structured(
            f"e2-{uid}", "com.example.order.placed", order_data(f"z-{uid}", total=0), f"z-{uid}"
        )
        dead = await a.post("/events?wait=30", content=zero, headers=CE_JSON)
        assert dead.status_code == 200, dead.text
        assert dead.json()["status"] == "dead_lettered"
        assert "unmatched" in dead.json()["detail"]
        view = (await a.get(f"/events/e2-{uid}")).json()
        assert (view["status"], view["outcome"]) == ("dead_lettered", "dead_lettered")
        assert f"{topics['orders']}.dlq" in view["detail"]
        assert view["workflow_id"] is None

        # Tenant B sees nothing of tenant A's.
        for path in (
            f"/events/e1-{uid}",
            f"/processes/{workflow_id}",
            f"/processes/{workflow_id}/stream",
        ):
            denied = await b.get(path)
            assert denied.status_code == 404, path
            assert denied.headers["content-type"] == "application/problem+json"
            assert (await a.get(path)).status_code == 200, path
        assert (await b.get("/processes", params={"key": order_id})).json()["items"] == []
        assert (await b.get("/processes", params={"tenant": f"a-{uid}"})).json()["items"] == []
        mine = (await a.get("/processes", params={"key": order_id})).json()["items"]
        assert [p["workflow_id"] for p in mine] == [workflow_id]

        # Tenant B can neither produce as tenant A nor reuse A's event id.
        forged = structured(
            f"e3-{uid}",
            "com.example.order.placed",
            order_data(f"f-{uid}"),
            f"f-{uid}",
            tenantid=f"a-{uid}",
        )
        refused = await b.post("/events", content=forged, headers=CE_JSON)
        assert refused.status_code == 403
        assert refused.json()["type"] == "urn:ktb:problem:forbidden-tenant"
        taken = await b.post("/events", content=event, headers=CE_JSON)
        assert taken.status_code == 409
        assert (await a.get(f"/events/e3-{uid}")).status_code == 404

        # Without a key, or with an unknown one: 401.
        anonymous = await a.get(f"/events/e1-{uid}", headers={"Authorization": ""})
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert (await a.get("/processes", headers=bearer("nope"))).status_code == 401

    records = await services.read(topics["orders"], 2)
    ids = sorted(services.decode(r).id for r in records)
    assert ids == [f"e1-{uid}", f"e2-{uid}"]
    tenants = {services.decode(r).tenant_id for r in records}
    assert tenants == {f"a-{uid}"}


async def test_events_without_provenance_are_found_through_visibility(
    services, topics, settings, catalog, client, uid, tmp_path
):
    task_queue = f"api-{uid}"
    workflow_id = f"a-{uid}:vis-{uid}-o-{uid}"
    config = routes_config(
        [
            {
                "name": "quick",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "action": "start",
                "workflow": "KtbApiTestQuick",
                "task_queue": task_queue,
                "workflow_id": f"vis-{uid}-{{data.order_id}}",
                "memo": {"outcome_topic": topics["outcomes"]},
            }
        ]
    )
    s = api_settings(settings, uid, tmp_path, config)
    # A bridge and worker that record no provenance, and an event produced straight to Kafka.
    async with (
        running_worker(s, catalog, client, task_queue, [QuickOrder]),
        running_bridge(s, catalog, client, config),
        running_api(s) as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as http,
    ):
        event_id = await services.produce(
            topics["orders"],
            "com.example.order.placed",
            order_data(f"o-{uid}"),
            key=f"o-{uid}",
            tenant=f"a-{uid}",
        )

        async def found() -> dict[str, Any]:
            response = await http.get(f"/events/{event_id}")
            assert response.status_code == 200, response.text
            view = response.json()
            assert view["status"] == "completed", view
            return view

        view = await eventually(found)
        assert view["workflow_id"] == workflow_id
        assert view["read"]["topic"] == topics["orders"]
        assert view["key"] == f"o-{uid}"
        # No record of the handling, but the workflow's memo says what the bridge did.
        assert view["handlings"] == []
        assert (view["route"], view["action"], view["outcome"]) == ("quick", "start", "started")
        assert (await http.get(f"/events/{event_id}", headers=bearer(KEY_B))).status_code == 404
