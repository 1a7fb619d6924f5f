"""The latency scenario's plain Kafka-fed starter (``bench.plain``) on real Kafka and
Temporal: every event started once, with the request the bridge and the raw side send."""

from __future__ import annotations

from pathlib import Path

import psutil
from temporalio.client import Client

from bench.common import (
    BenchContext,
    create_topic,
    order_records,
    produce_all,
    start_route,
    start_times,
    write_routes,
)
from bench.latency import plain_topic
from bench.plain import plain_starter
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
    async with plain_starter(settings, routes, topic, log) as pid:
        await produce_all(settings, topic, records)
        times = await start_times(client, f"TaskQueue = 'bench-{uid}'", len(records), 60)
        assert psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid), "the starter outlived its block"
    ctx = BenchContext(settings, catalog, client, quick=True, work_dir=tmp_path, machine={})
    requests = start_requests(ctx, topic, uid, records)
    assert set(times) == {r["id"] for r in requests}
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
