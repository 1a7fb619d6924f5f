"""The raw side of the throughput benchmark starts its workflows in the order a consumer
reads the events from a topic like a bridge round's (``bench.throughput.consumer_order``),
not in their numeric order: on real Kafka, every event once, partition by partition."""

from __future__ import annotations

import itertools
from pathlib import Path

from temporalio.client import Client

from bench.common import BenchContext, order_records
from bench.throughput import consumer_order, ordered_requests, start_requests
from bridge.codec import SchemaCatalog
from bridge.settings import Settings


def context(settings: Settings, catalog: SchemaCatalog, client: Client, work: Path) -> BenchContext:
    return BenchContext(settings, catalog, client, quick=True, work_dir=work, machine={})


async def test_consumer_order_is_every_event_once_out_of_numeric_order(
    settings: Settings, catalog: SchemaCatalog, client: Client, tmp_path: Path, uid: str
) -> None:
    count = 600
    records = order_records(catalog, uid, count)
    ctx = context(settings, catalog, client, tmp_path)
    order = await consumer_order(ctx, f"bench-order-{uid}", records)
    assert sorted(order) == list(range(count))
    # Six partitions filled by key hash: the numeric order would need every key of one
    # partition to sort below every key of the next.
    assert order != sorted(order)
    descents = sum(1 for a, b in itertools.pairwise(order) if b < a)
    # Each partition is read in offset order, which is the keys' numeric order: a read
    # goes down only where it moves from one partition's run of records to the next.
    assert 1 <= descents < count // 10


async def test_ordered_requests_are_the_start_requests_in_that_order(
    settings: Settings, catalog: SchemaCatalog, client: Client, tmp_path: Path, uid: str
) -> None:
    ctx = context(settings, catalog, client, tmp_path)
    count = 120
    requests = await ordered_requests(ctx, uid, count)
    plain = {
        r["id"]: r
        for r in start_requests(ctx, f"bench-raw-{uid}", uid, order_records(catalog, uid, count))
    }
    assert len(requests) == count
    assert {r["id"] for r in requests} == set(plain)
    assert [r["id"] for r in requests] != sorted(plain)
    # Each event gets a fresh CloudEvents id when built, so two builds differ in the memo
    # and search attributes that carry it; the start itself is the same.
    for request in requests:
        same = plain[request["id"]]
        for field in ("workflow", "args", "task_queue", "id_reuse_policy", "id_conflict_policy"):
            assert request[field] == same[field]
