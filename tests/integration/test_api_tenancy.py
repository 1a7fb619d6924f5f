"""Tenant isolation through the HTTP API with two keys: real Kafka, Temporal, bridge, worker.

Tenant A attacks tenant B's order through the API as a new user would: placing B's order
id again (and waiting for its result), paying or cancelling it, reading its event and its
process, following its stream. Every attempt ends in a 404 or a dead letter, and B's
workflow history is unchanged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from bridge.temporal.attributes import TENANT_ID
from tests.integration.test_api import (
    CE_JSON,
    KEY_A,
    KEY_B,
    api_settings,
    api_stack,
    bearer,
    structured,
)
from tests.support import eventually, order_data, routes_config

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"


def order_routes(topics: dict[str, str], uid: str, scoped: bool) -> list[dict[str, Any]]:
    return [
        {
            "name": "start",
            "topic": topics["orders"],
            "type": PLACED,
            "action": "start",
            "workflow": "KtbApiTestOrder",
            "task_queue": f"api-{uid}",
            "workflow_id": f"at-{uid}-{{data.order_id}}",
            "memo": {
                "outcome_topic": topics["outcomes"],
                "compensation_topic": topics["compensations"],
            },
            "tenant_scoped_ids": scoped,
        },
        {
            "name": "pay",
            "topic": topics["payments"],
            "type": CONFIRMED,
            "action": "signal",
            "workflow_id": f"at-{uid}-{{data.order_id}}",
            "signal": "payment_confirmed",
            "tenant_scoped_ids": scoped,
        },
    ]


async def history_length(client: Client, workflow_id: str) -> int:
    return len([e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()])


async def waiting_for_payment(http: httpx.AsyncClient, workflow_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        response = await http.get(f"/processes/{workflow_id}")
        assert response.status_code == 200, response.text
        view = response.json()
        assert (view.get("progress") or {}).get("step") == "awaiting_payment", view
        return view

    return await eventually(check, timeout=60)


async def test_scoped_ids_give_each_tenant_its_own_process_for_one_order_id(
    topics, settings, catalog, client, uid, tmp_path
):
    config = routes_config(order_routes(topics, uid, scoped=True))
    s = api_settings(settings, uid, tmp_path, config)
    order_id = f"o-{uid}"
    victim_id = f"b-{uid}:at-{uid}-{order_id}"
    async with (
        api_stack(s, config, catalog, client, f"api-{uid}") as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as a,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_B), timeout=30) as b,
    ):
        placed = structured(f"b1-{uid}", PLACED, order_data(order_id), order_id)
        accepted = (await b.post("/events", content=placed, headers=CE_JSON)).json()
        assert accepted["workflow_id"] == victim_id
        await waiting_for_payment(b, victim_id)
        before = await history_length(client, victim_id)

        # A places "the same" order and pays it: both act on A's own process only.
        again = structured(f"a1-{uid}", PLACED, order_data(order_id), order_id)
        mine = (await a.post("/events", content=again, headers=CE_JSON)).json()
        assert mine["workflow_id"] == f"a-{uid}:at-{uid}-{order_id}"
        # Orders and payments are different topics: pay once A's process waits for it.
        await waiting_for_payment(a, mine["workflow_id"])
        paid = {"order_id": order_id, "payment_id": "p-a", "amount_cents": 2500}
        payment = await a.post("/events?wait=30", content=structured(
            f"a2-{uid}", CONFIRMED, paid, order_id), headers=CE_JSON)  # fmt: skip
        assert payment.status_code == 200, payment.text
        assert payment.json()["status"] == "completed", payment.json()
        result = await a.post("/events?wait=30", content=again, headers=CE_JSON)
        assert result.json()["status"] == "completed"
        assert result.json()["workflow_id"] == mine["workflow_id"]
        view = (await a.get(f"/events/a1-{uid}")).json()
        assert view["workflow_id"] == mine["workflow_id"]
        assert view["process"]["tenant_id"] == f"a-{uid}"
        assert (await a.get(f"/processes/{victim_id}")).status_code == 404
        assert (await a.get(f"/processes/{victim_id}/stream")).status_code == 404
        # B's process never saw any of it.
        assert await history_length(client, victim_id) == before
        assert (await waiting_for_payment(b, victim_id))["status"] == "running"


async def test_unscoped_ids_every_attack_is_a_404_or_a_dead_letter(
    topics, settings, catalog, client, uid, tmp_path
):
    config = routes_config(order_routes(topics, uid, scoped=False))
    s = api_settings(settings, uid, tmp_path, config)
    paid_id, open_id = f"paid-{uid}", f"open-{uid}"
    async with (
        api_stack(s, config, catalog, client, f"api-{uid}") as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as a,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_B), timeout=30) as b,
    ):
        # B: one order paid and completed, one waiting for its payment.
        for order_id in (paid_id, open_id):
            placed = structured(f"b-{order_id}", PLACED, order_data(order_id), order_id)
            assert (await b.post("/events", content=placed, headers=CE_JSON)).status_code == 202
        # Orders and payments are different topics: pay once the process waits for it.
        await waiting_for_payment(b, f"at-{uid}-{paid_id}")
        payment = {"order_id": paid_id, "payment_id": "p-b", "amount_cents": 2500}
        pay = structured(f"b-pay-{uid}", CONFIRMED, payment, paid_id)
        done = await b.post("/events?wait=30", content=pay, headers=CE_JSON)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "completed", done.json()
        completed = client.get_workflow_handle(f"at-{uid}-{paid_id}")
        victim = f"at-{uid}-{open_id}"
        await asyncio.wait_for(completed.result(), 30)
        await waiting_for_payment(b, victim)
        before = await history_length(client, victim)

        # Read: A "places" B's completed order and waits for its result.
        stolen = structured(f"a-steal-{uid}", PLACED, order_data(paid_id), paid_id)
        answer = await a.post("/events?wait=20", content=stolen, headers=CE_JSON)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "dead_lettered" and "tenant_mismatch" in body["detail"]
        assert body["result"] is None and body["run_id"] is None
        view = (await a.get(f"/events/a-steal-{uid}")).json()
        assert view["status"] == "dead_lettered"
        assert view["workflow_id"] is None and view["process"] is None
        assert view["published"] == []
        assert all(h["workflow_id"] is None for h in view["handlings"])
        assert "p-b" not in json.dumps(view)

        # Write: A pays B's open order, and "places" it again.
        payment = {"order_id": open_id, "payment_id": "p-a", "amount_cents": 1}
        for event_id, event in (
            (f"a-pay-{uid}", structured(f"a-pay-{uid}", CONFIRMED, payment, open_id)),
            (f"a-again-{uid}", structured(f"a-again-{uid}", PLACED, order_data(open_id), open_id)),
        ):
            answer = await a.post("/events?wait=20", content=event, headers=CE_JSON)
            assert answer.json()["status"] == "dead_lettered", (event_id, answer.text)
            assert "tenant_mismatch" in answer.json()["detail"]
        assert await history_length(client, victim) == before
        assert (await waiting_for_payment(b, victim))["status"] == "running"

        # Reads of B's processes by A are 404s, exactly as missing ones.
        for path in (f"/processes/{victim}", f"/processes/{victim}/stream",
                     f"/events/b-{open_id}", "/processes/nothing-here"):  # fmt: skip
            denied = await a.get(path)
            assert denied.status_code == 404, path
            assert denied.json()["type"] == "urn:ktb:problem:not-found"

        # The dead letters are A's to see, not B's.
        mine = (await a.get("/dlq", params={"topic": f"{topics['orders']}.dlq"})).json()
        theirs = (await b.get("/dlq", params={"topic": f"{topics['orders']}.dlq"})).json()
        assert {x["event_id"] for x in mine["letters"]} == {f"a-steal-{uid}", f"a-again-{uid}"}
        assert {x["error_type"] for x in mine["letters"]} == {"tenant_mismatch"}
        assert theirs["letters"] == []


async def test_a_stream_ends_when_the_ids_latest_run_is_another_tenants(
    topics, settings, catalog, client, uid, tmp_path
):
    config = routes_config(order_routes(topics, uid, scoped=False))
    s = api_settings(settings, uid, tmp_path, config)
    s = s.model_copy(update={"api_stream_interval_s": 1.0})
    order_id = f"o-{uid}"
    workflow_id = f"at-{uid}-{order_id}"
    async with (
        api_stack(s, config, catalog, client, f"api-{uid}") as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=60) as a,
    ):
        placed = structured(f"a-{uid}", PLACED, order_data(order_id), order_id)
        assert (await a.post("/events", content=placed, headers=CE_JSON)).status_code == 202
        await waiting_for_payment(a, workflow_id)
        messages: list[tuple[str, dict[str, Any]]] = []
        async with a.stream("GET", f"/processes/{workflow_id}/stream") as response:
            assert response.status_code == 200
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    messages.append((kind, json.loads(line.removeprefix("data: "))))
                    if len(messages) == 1:
                        # The id's latest run becomes tenant B's in one step.
                        taken = await client.start_workflow(
                            "KtbApiTestOrder", order_data(order_id), id=workflow_id,
                            task_queue=f"api-{uid}",
                            id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
                            search_attributes=TypedSearchAttributes(
                                [SearchAttributePair(TENANT_ID, f"b-{uid}")]
                            ),
                            memo={"outcome_topic": topics["outcomes"],
                                  "compensation_topic": topics["compensations"]},
                        )  # fmt: skip
    assert messages[0][0] == "state" and messages[0][1]["run_id"] != taken.result_run_id
    assert messages[-1] == ("error", {"status": 404, "detail": f"no process {workflow_id!r}"})
    assert all(m.get("run_id") != taken.result_run_id for _, m in messages)


async def test_the_api_and_the_bridge_read_one_id(topics, settings, catalog, client, uid, tmp_path):
    """``e%2D1`` is its own id on every path, never ``e-1`` (the Kafka binding does not
    percent-encode): both are produced, handled and looked up apart."""
    config = routes_config(order_routes(topics, uid, scoped=True))
    s = api_settings(settings, uid, tmp_path, config)
    async with (
        api_stack(s, config, catalog, client, f"api-{uid}") as url,
        httpx.AsyncClient(base_url=url, headers=bearer(KEY_A), timeout=30) as a,
    ):
        escaped, plain = f"e%2D1-{uid}", f"e-1-{uid}"
        for event_id, order_id in ((escaped, f"x-{uid}"), (plain, f"y-{uid}")):
            event = structured(event_id, PLACED, order_data(order_id), order_id)
            answer = await a.post("/events", content=event, headers=CE_JSON)
            assert answer.status_code == 202, answer.text
            assert answer.json()["duplicate"] is False, event_id

        async def handled(event_id: str, order_id: str) -> None:
            async def check() -> bool:
                view = (await a.get(f"/events/{quote(event_id, safe='')}")).json()
                assert view.get("outcome") == "started", view
                assert view["workflow_id"] == f"a-{uid}:at-{uid}-{order_id}"
                return True

            await eventually(check, timeout=60)

        await handled(escaped, f"x-{uid}")
        await handled(plain, f"y-{uid}")
