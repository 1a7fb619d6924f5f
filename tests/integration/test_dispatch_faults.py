"""What the dispatcher does at the edges Temporal draws: closed workflows, updates that are
rejected, not taken or interrupted, and requests too large for gRPC. Real Kafka and Temporal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from temporalio.client import Client

from bridge.dlq.publisher import ERROR_MESSAGE, ERROR_TYPE
from bridge.kafka import ensure_topics
from bridge.observability.metrics import Metrics
from bridge.replay import ReplayRequest, resolve_plan, run_replay
from bridge.settings import Settings
from bridge.temporal.client import connect_temporal
from tests.support import (
    Services,
    eventually,
    order_data,
    payment,
    received,
    recorder_routes,
    routes_config,
    running_bridge,
    running_worker,
    workflow_result,
    write_routes,
)
from tests.workflows import Recorder

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"


async def dead_letters(services: Services, topic: str, count: int, timeout: float = 60) -> list:
    """Exactly the letters on ``<topic>.dlq`` once there are ``count`` of them."""

    async def enough() -> list:
        found = await services.read(f"{topic}.dlq", count, timeout=3)
        return found if len(found) >= count else []

    if count == 0:
        return await services.read(f"{topic}.dlq", 1, timeout=3)
    return await eventually(enough, timeout=timeout)


async def committed_to_end(services: Services, topic: str) -> None:
    ends = await services.end_offsets(topic)

    async def done() -> bool:
        return await services.committed(topic) == ends

    await eventually(done, timeout=60)


async def test_signals_to_a_closed_workflow_live_and_in_replay(
    services, settings: Settings, catalog, client: Client, uid: str, tmp_path: Path
) -> None:
    topic = f"closed-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(recorder_routes(topic, f"df-{uid}"))
    await services.produce(topic, PLACED, order_data("o-1"), key="o-1")
    noted = await services.produce(topic, CONFIRMED, payment("o-1", "note-1", 5), key="o-1")
    finished = await services.produce(topic, CONFIRMED, payment("o-1", "finish", 0), key="o-1")
    async with (
        running_worker(settings, catalog, client, f"df-{uid}", [Recorder]),
        running_bridge(settings, catalog, client, config),
    ):
        assert await workflow_result(client, f"df-{uid}-o-1") == [5]
        await committed_to_end(services, topic)
    # Redelivered after the workflow closed (as after a crash before the commit) and a
    # signal it never received.
    await services.produce(topic, CONFIRMED, payment("o-1", "note-1", 5), key="o-1", id=noted)
    await services.produce(topic, CONFIRMED, payment("o-1", "finish", 0), key="o-1", id=finished)
    late = await services.produce(topic, CONFIRMED, payment("o-1", "note-2", 6), key="o-1")
    async with running_bridge(settings, catalog, client, config):
        letters = await dead_letters(services, topic, 1)
        await committed_to_end(services, topic)
    assert [dict(x.headers)["ce_id"].decode() for x in letters] == [late]
    assert dict(letters[0].headers)[ERROR_TYPE] == b"workflow_closed"
    assert await services.read(f"{topic}.dlq", 2, timeout=3) == letters

    # An idempotent replay of the whole range: every signal the workflow received is a
    # duplicate; only the one it never received is dead-lettered (again).
    replay_settings = settings.model_copy(
        update={"routes_file": write_routes(tmp_path / "routes.yaml", config)}
    )
    plan = await resolve_plan(replay_settings, ReplayRequest(topic=topic, start="earliest"))
    report = await run_replay(replay_settings, plan, client=client)
    assert (report.read, report.duplicates, report.dead_lettered) == (6, 5, 1)
    letters = await dead_letters(services, topic, 2)
    assert [dict(x.headers)["ce_id"].decode() for x in letters] == [late, late]


async def test_rejected_update_is_a_dead_letter_with_the_workflows_reason(
    services, settings: Settings, catalog, client: Client, uid: str
) -> None:
    topic = f"rejected-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(recorder_routes(topic, f"df-{uid}"))
    handle = client.get_workflow_handle(f"df-{uid}-o-1")
    await services.produce(topic, CONFIRMED, payment("o-1", "add-1", 3), key="o-1")
    bad = await services.produce(topic, CONFIRMED, payment("o-1", "add-2", -4), key="o-1")
    await services.produce(topic, CONFIRMED, payment("o-1", "add-3", 8), key="o-1")
    async with (
        running_worker(settings, catalog, client, f"df-{uid}", [Recorder]),
        running_bridge(settings, catalog, client, config),
    ):
        letters = await dead_letters(services, topic, 1)
        await committed_to_end(services, topic)
        assert await handle.query("received") == [3, 8]
    headers = dict(letters[0].headers)
    assert headers["ce_id"].decode() == bad
    assert headers[ERROR_TYPE] == b"update_rejected"
    assert b"amount_cents must not be negative" in headers[ERROR_MESSAGE]


async def test_update_with_no_worker_waits_instead_of_dead_lettering(
    services, settings: Settings, catalog, client: Client, uid: str
) -> None:
    topic = f"noworker-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(recorder_routes(topic, f"df-{uid}"))
    handle = client.get_workflow_handle(f"df-{uid}-o-1")
    metrics = Metrics()
    fast = settings.model_copy(update={"retry_max_s": 0.5, "temporal_rpc_timeout_s": 2.0})
    await services.produce(topic, CONFIRMED, payment("o-1", "add-1", 3), key="o-1")
    async with running_bridge(fast, catalog, client, config, metrics=metrics):
        # More attempts than the consumer gives an unexpected error before dead-lettering.
        async def retried() -> bool:
            return retries(metrics, topic) >= 6

        await eventually(retried, timeout=90)
        assert await dead_letters(services, topic, 0) == []
        async with running_worker(settings, catalog, client, f"df-{uid}", [Recorder]):
            await committed_to_end(services, topic)
            assert await handle.query("received") == [3]
    assert await dead_letters(services, topic, 0) == []


async def test_unresponsive_temporal_during_update_with_start_pauses_without_dead_letters(
    private_stack, catalog, uid: str
) -> None:
    settings = Settings(
        kafka_bootstrap=private_stack.kafka_bootstrap,
        temporal_address=private_stack.temporal_address,
        group_id=f"upd-outage-{uid}",
        commit_interval_s=0.2,
        retry_initial_s=0.2,
        retry_max_s=1.0,
        shutdown_timeout_s=10,
        temporal_rpc_timeout_s=3.0,
    )
    topic = f"upd-outage-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    client = await connect_temporal(settings)
    services = Services(settings, catalog, client)
    await services.start()
    config = routes_config(recorder_routes(topic, f"df-{uid}"))
    temporal = private_stack.temporal
    assert temporal is not None and temporal.service is not None
    metrics = Metrics()
    handle = client.get_workflow_handle(f"df-{uid}-o-1")
    try:
        async with (
            running_worker(settings, catalog, client, f"df-{uid}", [Recorder]),
            running_bridge(settings, catalog, client, config, metrics=metrics) as bridge,
        ):
            await services.produce(topic, CONFIRMED, payment("o-1", "add-1", 1), key="o-1")
            await eventually(lambda: _true(bridge.processed == 1), timeout=60)
            # Stopped, not killed: calls hang until their deadline, as on an overloaded server.
            pid = temporal.service.proc.pid  # type: ignore[union-attr]
            os.killpg(pid, signal.SIGSTOP)
            try:
                for n in range(2, 6):
                    await services.produce(
                        topic, CONFIRMED, payment("o-1", f"add-{n}", n), key="o-1"
                    )

                async def retried() -> bool:
                    return retries(metrics, topic) >= 6

                await eventually(retried, timeout=120)
                assert bridge.processed == 1
                assert await services.end_offsets(f"{topic}.dlq") == {0: 0}
            finally:
                os.killpg(pid, signal.SIGCONT)
            await eventually(lambda: _true(bridge.processed == 5), timeout=120)
            await committed_to_end(services, topic)

            async def all_applied() -> bool:
                return await received(handle) == [1, 2, 3, 4, 5]

            await eventually(all_applied, timeout=60)
        assert await services.end_offsets(f"{topic}.dlq") == {0: 0}
    finally:
        await services.stop()


async def test_a_request_over_grpcs_size_limit_is_a_dead_letter(
    services, settings: Settings, catalog, client: Client, uid: str
) -> None:
    topic = f"huge-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    route = {
        "name": f"huge-{uid}", "topic": topic, "type": PLACED, "action": "start",
        "workflow": "KtbTestNoop", "task_queue": f"df-{uid}",
        "workflow_id": f"huge-{uid}-{{data.order_id}}",
        # Five copies of a ~0.9 MB event: each record fits Kafka, the start is 4.5 MB.
        "args": ["data", "data", "data", "data", "data"],
    }  # fmt: skip
    big = {**order_data("o-1"), "customer_id": "c" * 900_000}
    huge = await services.produce(topic, PLACED, big, key="o-1")
    await services.produce(topic, PLACED, order_data("o-2"), key="o-2")
    async with running_bridge(settings, catalog, client, routes_config([route])):
        letters = await dead_letters(services, topic, 1)
        await committed_to_end(services, topic)
    headers = dict(letters[0].headers)
    assert headers["ce_id"].decode() == huge
    assert headers[ERROR_TYPE] == b"payload_too_large"
    desc = await client.get_workflow_handle(f"huge-{uid}-o-2").describe()
    assert desc.workflow_type == "KtbTestNoop"


def retries(metrics: Metrics, topic: str) -> float:
    """``ktb_transient_retries_total`` of ``topic`` so far."""
    found = metrics.registry.get_sample_value("ktb_transient_retries_total", {"topic": topic})
    return found or 0.0


async def _true(value: bool) -> bool:
    return value
