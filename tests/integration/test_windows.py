"""Debounce and batch routes against real Kafka and Temporal (issue 17).

Every event of a window reaches the run the window starts, once, in offset order;
other workflow ids are not affected; a bridge killed with SIGKILL and restarted, or
a rebalance that moves partitions, neither loses nor repeats an event of a window.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from bridge.flow import collector_id
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import open_telemetry
from bridge.settings import Settings
from bridge.temporal.attributes import TENANT_ID
from bridge.wiring import open_worker
from tests.support import (
    Services,
    bridge_process,
    eventually,
    order_data,
    routes_config,
    running_bridge,
    running_worker,
    write_routes,
)
from tests.workflows import WindowRun

PLACED = "com.example.order.placed"

Delivered = list[list[dict[str, Any]]]
"""What each run of a target received, oldest run first."""


def window_route(topic: str, uid: str, workflow_id: str, **options: Any) -> dict[str, Any]:
    return {
        "name": f"win-{uid}",
        "topic": topic,
        "type": PLACED,
        "action": "start",
        "workflow": "KtbTestWindow",
        "task_queue": f"tq-{uid}",
        "workflow_id": workflow_id,
        **options,
    }


async def produce(
    services: Services, topic: str, events: list[tuple[str, str]], tenant: str | None = None
) -> list[str]:
    """Produce ``(event id, key)`` pairs, in order; the order id is the event id."""
    for event_id, key in events:
        await services.produce(
            topic, PLACED, order_data(event_id), key=key, id=event_id, tenant=tenant
        )
    return [event_id for event_id, _ in events]


def numbered(uid: str, numbers: range, keys: int = 25) -> list[tuple[str, str]]:
    """Events ``<uid>-<n>`` spread over ``keys`` keys (so over every partition)."""
    return [(f"{uid}-{n:04d}", f"k{n % keys}") for n in numbers]


async def delivered(client: Client, workflow_id: str) -> Delivered:
    """What every completed run of ``workflow_id`` received, oldest run first."""
    runs = []
    async for run in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        if run.status is WorkflowExecutionStatus.COMPLETED:
            result = await client.get_workflow_handle(workflow_id, run_id=run.run_id).result()
            runs.append((run.start_time, result))
    return [result for _, result in sorted(runs, key=lambda r: r[0])]


async def window_open(client: Client, workflow_id: str, tenant: str | None = None) -> list[str]:
    """The event ids waiting in the open window of ``workflow_id``."""
    handle = client.get_workflow_handle(collector_id(tenant, workflow_id))
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return []  # no event has reached the window yet
        raise
    if described.status is not WorkflowExecutionStatus.RUNNING:
        return []
    pending: list[str] = await handle.query("ktb_window")
    return pending


async def all_delivered(
    client: Client, workflow_id: str, count: int, tenant: str | None = None
) -> Delivered:
    """Wait until the runs of ``workflow_id`` received ``count`` events and nothing waits."""

    async def done() -> Delivered | None:
        runs = await delivered(client, workflow_id)
        if sum(len(r) for r in runs) < count or await window_open(client, workflow_id, tenant):
            return None
        return runs

    result: Delivered = await eventually(done, timeout=120, interval=0.5)
    return result


def check_exactly_once(runs: Delivered, produced: list[str], max_events: int) -> None:
    """Every produced id in exactly one run, no run over ``max_events``, per-key order kept."""
    ids = [e["event_id"] for run in runs for e in run]
    assert sorted(ids) == sorted(produced), "an event missing or delivered twice"
    assert all(0 < len(run) <= max_events for run in runs), [len(r) for r in runs]
    keys = {event_id: n % 25 for n, event_id in enumerate(produced)}
    by_key: dict[int, list[str]] = defaultdict(list)
    for event_id in ids:
        by_key[keys[event_id]].append(event_id)
    assert all(seq == sorted(seq) for seq in by_key.values()), "a key's events out of order"


async def test_debounce_delivers_every_event_of_a_quiet_period_to_one_run(
    services: Services,
    settings: Settings,
    catalog: Any,
    client: Client,
    topics: dict[str, str],
    uid: str,
) -> None:
    """Five events of one key within the period make one run that gets all five in order;
    another key (of a tenant) gets its own run; the worker entry point registered the
    collector and counts the windows."""
    topic = topics["orders"]
    route = window_route(
        topic, uid, f"digest-{uid}-{{key}}", debounce={"period": "2s", "max_wait": "30s"}
    )
    metrics = Metrics()
    with open_telemetry(settings, "worker", metrics) as telemetry:
        async with (
            open_worker(settings, telemetry, f"tq-{uid}", [WindowRun]),
            running_bridge(settings, catalog, client, routes_config([route])),
        ):
            a = await produce(services, topic, [(f"{uid}-a{n}", "a") for n in range(5)])
            b = await produce(services, topic, [(f"{uid}-b{n}", "b") for n in range(2)], "acme")
            runs_a = await all_delivered(client, f"digest-{uid}-a", 5)
            runs_b = await all_delivered(client, f"acme:digest-{uid}-b", 2, "acme")

            async def counted() -> float | None:
                return metrics.registry.get_sample_value(
                    "ktb_debounce_windows_total", {"route": f"win-{uid}"}
                )

            assert await eventually(counted) == 2.0
    assert [[e["event_id"] for e in run] for run in runs_a] == [a]
    assert [[e["event_id"] for e in run] for run in runs_b] == [b]
    described = await client.get_workflow_handle(f"acme:digest-{uid}-b").describe()
    assert described.typed_search_attributes.get(TENANT_ID) == "acme"
    assert described.parent_id == collector_id("acme", f"acme:digest-{uid}-b")


async def test_a_batch_of_250_events_makes_three_runs_with_every_event_once(
    services: Services,
    settings: Settings,
    catalog: Any,
    client: Client,
    topics: dict[str, str],
    uid: str,
) -> None:
    topic = topics["orders"]
    workflow_id = f"settle-{uid}"
    # max_wait is long enough for the first 200 events to arrive on a loaded machine (each
    # is a signal-with-start): the full batches close at max_events, the last at max_wait.
    route = window_route(topic, uid, workflow_id, batch={"max_events": 100, "max_wait": "30s"})
    produced = await produce(services, topic, numbered(uid, range(250)))
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [WindowRun]),
        running_bridge(settings, catalog, client, routes_config([route])),
    ):
        runs = await all_delivered(client, workflow_id, 250)
    check_exactly_once(runs, produced, 100)
    assert sorted(len(run) for run in runs) == [50, 100, 100]


@pytest.mark.slow
async def test_a_batch_survives_a_bridge_killed_mid_window(
    services: Services,
    settings: Settings,
    catalog: Any,
    client: Client,
    topics: dict[str, str],
    uid: str,
    tmp_path: Path,
) -> None:
    """The bridge is SIGKILLed while a window is open and before it committed anything:
    every event is read again after the restart, and the collector drops each repeat."""
    topic = topics["orders"]
    workflow_id = f"settle-{uid}"
    route = window_route(topic, uid, workflow_id, batch={"max_events": 100, "max_wait": "10s"})
    routes_file = write_routes(tmp_path / "routes.yaml", routes_config([route]))
    log = tmp_path / "bridge.log"
    static = {"KTB_GROUP_INSTANCE_ID": f"win-{uid}", "KTB_SESSION_TIMEOUT_S": "30"}
    produced = await produce(services, topic, numbered(uid, range(150)))
    async with running_worker(settings, catalog, client, f"tq-{uid}", [WindowRun]):
        # Nothing is committed before the kill: the restarted bridge reads all 150 again.
        proc = bridge_process(settings, routes_file, log, KTB_COMMIT_INTERVAL_S="600", **static)
        try:

            async def second_window_filled() -> bool:
                return len(await window_open(client, workflow_id)) == 50

            await eventually(second_window_filled, timeout=60, interval=0.1)
            assert sum((await services.committed(topic)).values()) == 0
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc = bridge_process(settings, routes_file, log, **static)
            produced += await produce(services, topic, numbered(uid, range(150, 250)))
            runs = await all_delivered(client, workflow_id, 250)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, log.read_text()[-3000:]
    check_exactly_once(runs, produced, 100)
    print(f"windows after kill -9: {[len(run) for run in runs]}")


@pytest.mark.slow
async def test_a_batch_survives_a_rebalance_that_moves_its_partitions(
    services: Services,
    settings: Settings,
    catalog: Any,
    client: Client,
    topics: dict[str, str],
    uid: str,
) -> None:
    """A second bridge joins while a window is open and leaves again: partitions move twice."""
    topic = topics["orders"]
    workflow_id = f"settle-{uid}"
    route = window_route(topic, uid, workflow_id, batch={"max_events": 100, "max_wait": "10s"})
    config = routes_config([route])
    produced = await produce(services, topic, numbered(uid, range(150)))
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [WindowRun]),
        running_bridge(settings, catalog, client, config) as first,
    ):

        async def second_window_open() -> bool:
            return len(await window_open(client, workflow_id)) > 0

        await eventually(second_window_open, timeout=60, interval=0.1)
        async with running_bridge(settings, catalog, client, config) as second:

            async def shared() -> bool:
                return bool(first.partitions) and bool(second.partitions)

            await eventually(shared, timeout=60)
            produced += await produce(services, topic, numbered(uid, range(150, 200)))
        # The second bridge has left: its partitions moved back to the first.
        produced += await produce(services, topic, numbered(uid, range(200, 250)))
        runs = await all_delivered(client, workflow_id, 250)
    check_exactly_once(runs, produced, 100)


async def test_a_window_never_reaches_another_tenants_workflow(
    services: Services,
    settings: Settings,
    catalog: Any,
    client: Client,
    topics: dict[str, str],
    uid: str,
) -> None:
    """A route without tenant-scoped ids points acme's event at a workflow of no tenant:
    the event is a dead letter ``tenant_mismatch`` and no window opens."""
    topic = topics["orders"]
    target = f"shared-{uid}"
    route = window_route(
        topic,
        uid,
        target,
        tenant_scoped_ids=False,
        batch={"max_events": 10, "max_wait": "1s"},
    )
    async with running_worker(settings, catalog, client, f"tq-{uid}", [WindowRun]):
        await client.execute_workflow("KtbTestWindow", [], id=target, task_queue=f"tq-{uid}")
        async with running_bridge(settings, catalog, client, routes_config([route])):
            await produce(services, topic, [(f"{uid}-x", "x")], tenant="acme")
            [letter] = await services.read(f"{topic}.dlq", 1)
    assert dict(letter.headers)["ktb_error_type"] == b"tenant_mismatch"
    assert await delivered(client, target) == [[]]
    with pytest.raises(RPCError) as missing:
        await client.get_workflow_handle(collector_id("acme", target)).describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND
