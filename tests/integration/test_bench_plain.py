"""The latency scenario's plain Kafka-fed starter (``bench.plain``) on real Kafka and
Temporal: every event started once, with the request the bridge and the raw side send."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from bench.common import (
    BenchContext,
    await_count,
    check_starts,
    create_topic,
    executions,
    order_records,
    produce_all,
    route_query,
    start_route,
    write_routes,
)
from bench.latency import plain_topic
from bench.plain import PlainStarter, PlainStarterError
from bench.throughput import start_requests
from bridge.codec import SchemaCatalog
from bridge.settings import Settings


async def test_the_plain_starter_starts_every_event_once_with_the_bridges_request(
    settings: Settings, catalog: SchemaCatalog, client: Client, tmp_path: Path, uid: str
) -> None:
    topic = plain_topic(uid)
    await create_topic(settings, topic)
    routes = write_routes(tmp_path / "routes.yaml", [start_route(topic, uid)])
    records = order_records(catalog, uid, 40)
    log = tmp_path / "plain.log"
    async with PlainStarter(settings, routes, topic, log) as starter:
        await produce_all(settings, topic, records)
        await await_count(client, route_query(uid), len(records), 60)
        starter.check()  # still running
    # SIGTERM ended it, within its time, without SIGKILL and cleanly.
    assert not starter.killed
    assert starter.proc is not None and starter.proc.returncode == 0
    ctx = BenchContext(settings, catalog, client, quick=True, work_dir=tmp_path, machine={})
    requests = start_requests(ctx, topic, uid, records)
    listed = await executions(client, route_query(uid))
    check_starts(
        [r["id"] for r in requests], (wf_id for wf_id, _ in listed)
    ).raise_unless_exactly_once("the plain starter")
    assert f"{topic}[" not in log.read_text()  # no start failed (each is written as topic[p]@o)
    # One start, read back: the workflow type, task queue and memo the bridge sends.
    first = requests[0]
    described = await client.get_workflow_handle(first["id"]).describe()
    assert described.workflow_type == first["workflow"]
    assert described.task_queue == first["task_queue"]
    memo = (await described.memo())["ktb"]
    for field in ("event_id", "event_type", "key", "route", "action", "outcome"):
        assert memo[field] == first["memo"]["ktb"][field], field
    assert memo["topic"] == topic


async def test_a_plain_starter_that_exited_says_so_with_its_log(
    settings: Settings, tmp_path: Path, uid: str
) -> None:
    missing = tmp_path / "no-routes.yaml"
    log = tmp_path / "plain.log"
    async with PlainStarter(settings, missing, plain_topic(uid), log) as starter:
        assert starter.proc is not None
        await asyncio.wait_for(starter.proc.wait(), 30)
        with pytest.raises(PlainStarterError, match=r"exited \(1\)") as raised:
            starter.check()
    # The log's tail says what went wrong.
    assert f"cannot read routes file {missing}" in str(raised.value)
