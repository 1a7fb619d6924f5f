"""Tenant isolation on every target an event reaches, straight on Kafka (``ce_tenantid``).

Two tenants, ``acme`` (the attacker) and ``globex`` (the victim). With tenant-scoped
workflow ids (the default) the same business key names two workflows; with routes
that opt out of scoping the ids collide, and then the check of the target's
``KtbTenantId`` is what keeps every action of acme's off globex's workflow: each one
is a dead letter ``tenant_mismatch`` and globex's history is unchanged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bridge.dlq.publisher import ERROR_MESSAGE, ERROR_TYPE
from bridge.kafka import ensure_topics
from bridge.replay import ReplayRequest, resolve_plan, run_replay
from bridge.settings import Settings
from bridge.temporal.attributes import TENANT_ID
from tests.support import (
    count_is,
    eventually,
    order_data,
    payment,
    received,
    recorder_routes,
    routes_config,
    running_bridge,
    running_worker,
    write_routes,
)
from tests.workflows import Recorder

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
ACME, GLOBEX = "acme", "globex"


async def history_length(client: Client, workflow_id: str) -> int:
    return len([e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()])


async def letters_of(services, topic: str, count: int) -> list[Any]:
    async def enough() -> list[Any]:
        found = await services.read(f"{topic}.dlq", count, timeout=5)
        return found if len(found) >= count else []

    return await eventually(enough, timeout=90)


async def test_the_same_business_key_of_two_tenants_names_two_workflows(
    services, settings: Settings, catalog, client: Client, uid: str
) -> None:
    topic = f"tenants-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(recorder_routes(topic, f"tn-{uid}"))
    order = order_data("o-1")
    async with (
        running_worker(settings, catalog, client, f"tn-{uid}", [Recorder]),
        running_bridge(settings, catalog, client, config),
    ):
        await services.produce(topic, PLACED, order, key="o-1", tenant=GLOBEX)
        # acme "places" globex's order first, then tries to signal it: both land on acme's own.
        await services.produce(topic, PLACED, order, key="o-1", tenant=ACME)
        await services.produce(topic, CONFIRMED, payment("o-1", "note", 7), key="o-1", tenant=ACME)
        await services.produce(topic, CONFIRMED, payment("o-1", "note", 9), key="o-1",
                               tenant=GLOBEX)  # fmt: skip
        acme = client.get_workflow_handle(f"{ACME}:tn-{uid}-o-1")
        globex = client.get_workflow_handle(f"{GLOBEX}:tn-{uid}-o-1")

        async def both_noted() -> bool:
            return await received(acme) == [7] and await received(globex) == [9]

        await eventually(both_noted, timeout=60)
    assert (await acme.describe()).typed_search_attributes.get(TENANT_ID) == ACME
    assert (await globex.describe()).typed_search_attributes.get(TENANT_ID) == GLOBEX
    assert await services.read(f"{topic}.dlq", 1, timeout=2) == []


async def test_no_action_of_one_tenant_reaches_another_tenants_workflow(
    services, settings: Settings, catalog, client: Client, uid: str
) -> None:
    topic = f"tenants-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    # Unscoped ids: acme's events name globex's workflow exactly.
    config = routes_config(recorder_routes(topic, f"tn-{uid}", tenant_scoped_ids=False))
    victim = client.get_workflow_handle(f"tn-{uid}-o-1")
    async with running_worker(settings, catalog, client, f"tn-{uid}", [Recorder]):
        async with running_bridge(settings, catalog, client, config):
            await services.produce(topic, PLACED, order_data("o-1"), key="o-1", tenant=GLOBEX)
            await services.produce(topic, CONFIRMED, payment("o-1", "note", 1), key="o-1",
                                   tenant=GLOBEX)  # fmt: skip

            async def noted() -> bool:
                return await received(victim) == [1]

            await eventually(noted, timeout=60)
            before = await history_length(client, f"tn-{uid}-o-1")
            attacks = [
                (PLACED, order_data("o-1"), ACME),
                (CONFIRMED, payment("o-1", "note-a", 66), ACME),
                (CONFIRMED, payment("o-1", "sws-a", 66), ACME),
                (CONFIRMED, payment("o-1", "add-a", 66), ACME),
                (CONFIRMED, payment("o-1", "cancel-a", 66), ACME),
                (CONFIRMED, payment("o-1", "stop-a", 66), ACME),
                (CONFIRMED, payment("o-1", "finish-a", 66), ACME),
                # No tenant at all is not globex either.
                (CONFIRMED, payment("o-1", "note-none", 66), None),
            ]
            ids = [
                await services.produce(topic, kind, data, key="o-1", tenant=tenant)
                for kind, data, tenant in attacks
            ]
            letters = await letters_of(services, topic, len(attacks))
        headers = [dict(letter.headers) for letter in letters]
        assert [h["ce_id"].decode() for h in headers] == ids
        assert {h[ERROR_TYPE] for h in headers} == {b"tenant_mismatch"}
        # The letter tells acme nothing about whose workflow it is.
        assert not any(GLOBEX.encode() in h[ERROR_MESSAGE] for h in headers)
        desc = await victim.describe()
        assert desc.status is WorkflowExecutionStatus.RUNNING
        assert await history_length(client, f"tn-{uid}-o-1") == before
        assert await victim.query("received") == [1]
        # The victim's own events still act, after all of acme's, in key order.
        async with running_bridge(settings, catalog, client, config):
            await services.produce(topic, CONFIRMED, payment("o-1", "finish", 0), key="o-1",
                                   tenant=GLOBEX)  # fmt: skip
            assert await asyncio.wait_for(victim.result(), 60) == [1]


async def test_an_idempotent_replay_does_not_report_another_tenants_workflow(
    services, settings: Settings, catalog, client: Client, uid: str, tmp_path: Path
) -> None:
    topic = f"tenants-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(recorder_routes(topic, f"tn-{uid}", tenant_scoped_ids=False)[:1])
    await client.start_workflow(
        "KtbTestRecorder", order_data("o-1"), id=f"tn-{uid}-o-1", task_queue=f"tn-{uid}",
        search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT_ID, GLOBEX)]),
    )  # fmt: skip
    await services.produce(topic, PLACED, order_data("o-1"), key="o-1", tenant=ACME)
    await services.produce(topic, PLACED, order_data("o-1"), key="o-1", tenant=GLOBEX)

    await eventually(lambda: count_is(client, f"WorkflowId = 'tn-{uid}-o-1'", 1))
    replay_settings = settings.model_copy(
        update={"routes_file": write_routes(tmp_path / "routes.yaml", config)}
    )
    plan = await resolve_plan(replay_settings, ReplayRequest(topic=topic, start="earliest"))
    report = await run_replay(replay_settings, plan, client=client)
    # globex's own start is a duplicate, acme's a dead letter: visibility's answer is
    # checked against the event's tenant like the start's own.
    assert (report.read, report.duplicates, report.dead_lettered) == (2, 1, 1)
    letters = await letters_of(services, topic, 1)
    assert dict(letters[0].headers)[ERROR_TYPE] == b"tenant_mismatch"
    assert dict(letters[0].headers)["ce_tenantid"] == ACME.encode()
