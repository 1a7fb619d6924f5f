"""Ingress acceptance: exactly-once effect, per-key order, dead letters, commits, faults."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import psutil

from bridge.dlq.publisher import (
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
)
from bridge.settings import Settings
from bridge.temporal.client import connect_temporal
from tests.support import (
    bridge_process,
    count,
    count_is,
    eventually,
    order_data,
    routes_config,
    running_bridge,
    running_worker,
    runs_listed,
    runs_per_id,
    workflow_result,
    write_routes,
)
from tests.workflows import Noop, Recorder

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"


def start_route(topic: str, uid: str, workflow: str = "KtbTestNoop", **extra: Any) -> dict:
    return {
        "name": f"start-{uid}",
        "topic": topic,
        "type": PLACED,
        "action": "start",
        "workflow": workflow,
        "task_queue": f"tq-{uid}",
        "workflow_id": f"wf-{uid}-{{data.order_id}}",
        **extra,
    }


def note_route(topic: str, uid: str) -> dict:
    return {
        "name": f"note-{uid}",
        "topic": topic,
        "type": CONFIRMED,
        "action": "signal",
        "workflow_id": f"wf-{uid}-{{data.order_id}}",
        "signal": "note",
    }


def confirmed(order_id: str, seq: int) -> dict[str, Any]:
    return {"order_id": order_id, "payment_id": f"p-{seq}", "amount_cents": seq}


async def test_redelivered_event_starts_one_workflow(
    services, topics, settings, catalog, client, uid
):
    config = routes_config([start_route(topics["orders"], uid)])
    data = order_data("dup-1")
    for _ in range(3):
        await services.produce(topics["orders"], PLACED, data, key="dup-1", id=f"evt-{uid}")
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Noop]),
        running_bridge(settings, catalog, client, config) as bridge,
    ):
        assert await workflow_result(client, f"wf-{uid}-dup-1") == "dup-1"
        await eventually(lambda: _true(bridge.processed == 3))
    # The same range consumed again by a group with no committed offsets.
    again = settings.model_copy(update={"group_id": f"{settings.group_id}-again"})
    async with running_bridge(again, catalog, client, config) as bridge:
        await eventually(lambda: _true(bridge.processed == 3))
    await runs_listed(client, f"wf-{uid}-", {f"wf-{uid}-dup-1": 1})


async def _true(value: bool) -> bool:
    return value


async def test_duplicate_signal_changes_state_once(
    services, topics, settings, catalog, client, uid
):
    config = routes_config(
        [start_route(topics["orders"], uid, "KtbTestRecorder"), note_route(topics["orders"], uid)]
    )
    await services.produce(topics["orders"], PLACED, order_data("s-1"), key="s-1")
    for _ in range(3):
        await services.produce(
            topics["orders"], CONFIRMED, confirmed("s-1", 7), key="s-1", id=f"sig-{uid}"
        )
    await services.produce(topics["orders"], CONFIRMED, confirmed("s-1", 8), key="s-1")
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Recorder]),
        running_bridge(settings, catalog, client, config) as bridge,
    ):
        await eventually(lambda: _true(bridge.processed == 5))
        handle = client.get_workflow_handle(f"wf-{uid}-s-1")
        assert await handle.query("received") == [7, 8]


async def test_per_key_order_with_parallel_keys(services, topics, settings, catalog, client, uid):
    config = routes_config(
        [start_route(topics["orders"], uid, "KtbTestRecorder"), note_route(topics["orders"], uid)]
    )
    keys = [f"k{i}" for i in range(8)]
    for key in keys:
        await services.produce(topics["orders"], PLACED, order_data(key), key=key)
    for seq in range(1, 7):
        for key in keys:
            await services.produce(topics["orders"], CONFIRMED, confirmed(key, seq), key=key)
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Recorder]),
        running_bridge(settings, catalog, client, config) as bridge,
    ):
        await eventually(lambda: _true(bridge.processed == len(keys) * 7), timeout=60)
        for key in keys:
            handle = client.get_workflow_handle(f"wf-{uid}-{key}")
            assert await handle.query("received") == [1, 2, 3, 4, 5, 6], key


async def test_poison_record_goes_to_the_dlq(services, settings, catalog, client, uid):
    from bridge.kafka import ensure_topics

    topic = f"poison-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config([start_route(topic, uid)])
    poison_value = b"\xc3\x01not-a-real-fingerprint"
    poison_headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"poison-1"), ("ce_source", b"tests"),
        ("ce_type", PLACED.encode()), ("content-type", b"application/avro"),
    ]  # fmt: skip
    for i in range(101):
        if i == 50:
            await services.produce_raw(topic, poison_value, poison_headers, key=b"bad")
        else:
            await services.produce(topic, PLACED, order_data(f"p{i}"), key=f"p{i}")
    async with running_bridge(settings, catalog, client, config):
        letters = await services.read(f"{topic}.dlq", 1)
        assert len(letters) == 1
        letter = letters[0]
        assert letter.value == poison_value
        assert letter.key == b"bad"
        headers = dict(letter.headers)
        for name, value in poison_headers:
            assert headers[name] == value
        assert headers[ERROR_TYPE] == b"unknown_schema"
        assert headers[ORIGINAL_TOPIC] == topic.encode()
        assert headers[ORIGINAL_PARTITION] == b"0"
        assert headers[ORIGINAL_OFFSET] == b"50"
        assert headers[ERROR_MESSAGE] and headers[FAILED_AT]

        async def all_committed() -> bool:
            return (await services.committed(topic)) == {0: 101}

        await eventually(all_committed, timeout=30)
    assert await eventually(lambda: count_is(client, f"KtbRoute = 'start-{uid}'", 100))


async def test_bad_template_field_and_unmatched_are_dead_lettered(
    services, settings, catalog, client, uid
):
    from bridge.kafka import ensure_topics

    topic = f"bad-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    route = start_route(topic, uid, workflow_id=f"wf-{uid}-{{data.customer_id}}-{{subject}}")
    config = routes_config([route], unmatched="dead_letter")
    await services.produce(topic, PLACED, order_data("x"), key="x")
    await services.produce(topic, CONFIRMED, confirmed("x", 1), key="x")
    async with running_bridge(settings, catalog, client, config):
        letters = await services.read(f"{topic}.dlq", 2)
    kinds = sorted(dict(r.headers)[ERROR_TYPE] for r in letters)
    assert kinds == [b"route_error", b"unmatched"]


async def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    services, topics, settings, uid, tmp_path, client
):
    config = routes_config([start_route(topics["orders"], uid)])
    routes_file = write_routes(tmp_path / "routes.yaml", config)
    log = tmp_path / "bridge.log"
    total = 1000
    proc = bridge_process(settings, routes_file, log)
    for i in range(total):
        await services.producer.send(
            topics["orders"],
            **_record(services, order_data(f"n{i}"), f"n{i}"),
        )
    await services.producer.flush()

    async def some_started() -> bool:
        return await count(client, f"KtbRoute = 'start-{uid}'") >= 150

    await eventually(some_started, timeout=60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc = bridge_process(settings, routes_file, log)
    try:
        await eventually(lambda: count_is(client, f"KtbRoute = 'start-{uid}'", total), timeout=120)

        async def all_committed() -> bool:
            committed = await services.committed(topics["orders"])
            return committed == await services.end_offsets(topics["orders"])

        await eventually(all_committed, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    per_id = await runs_per_id(client, f"wf-{uid}-")
    assert len(per_id) == total
    assert set(per_id.values()) == {1}


def _record(services, data: dict[str, Any], key: str) -> dict[str, Any]:
    from bridge.envelope import encode_event

    rec = encode_event(services.catalog, type=PLACED, data=data, id=f"e-{key}-{time.time_ns()}",
                       source="tests", key=key)  # fmt: skip
    return {"value": rec.value, "key": rec.key, "headers": rec.headers}


async def test_two_instances_one_stopped_mid_stream(
    services, topics, settings, catalog, client, uid
):
    config = routes_config([start_route(topics["orders"], uid)])
    total = 300
    async with running_bridge(settings, catalog, client, config) as first:
        async with running_bridge(settings, catalog, client, config) as second:
            for i in range(total):
                await services.producer.send(
                    topics["orders"], **_record(services, order_data(f"t{i}"), f"t{i}")
                )
            await services.producer.flush()
            await eventually(lambda: _true(first.processed + second.processed >= 60), timeout=60)
        # ``second`` stopped mid-stream; ``first`` takes over its partitions.
        await eventually(lambda: count_is(client, f"KtbRoute = 'start-{uid}'", total), timeout=90)

        async def all_committed() -> bool:
            committed = await services.committed(topics["orders"])
            return committed == await services.end_offsets(topics["orders"])

        await eventually(all_committed, timeout=30)
    per_id = await runs_per_id(client, f"wf-{uid}-")
    assert len(per_id) == total and set(per_id.values()) == {1}


async def test_temporal_outage_pauses_without_dead_letters(private_stack, catalog, uid, tmp_path):

    from bridge.kafka import ensure_topics
    from tests.support import Services

    settings = Settings(
        kafka_bootstrap=private_stack.kafka_bootstrap,
        temporal_address=private_stack.temporal_address,
        group_id=f"outage-{uid}",
        commit_interval_s=0.2,
        retry_initial_s=0.2,
        retry_max_s=1.0,
        shutdown_timeout_s=10,
    )
    topic = f"outage-{uid}"
    await ensure_topics(settings, {topic: 3, f"{topic}.dlq": 1})
    client = await connect_temporal(settings)
    svc = Services(settings, catalog, client)
    await svc.start()
    config = routes_config([start_route(topic, uid)])
    temporal = private_stack.temporal
    assert temporal is not None and temporal.service is not None
    total = 400
    rss: list[float] = []
    try:
        async with running_bridge(settings, catalog, client, config) as bridge:
            for i in range(100):
                await svc.producer.send(topic, **_record(svc, order_data(f"o{i}"), f"o{i}"))
            await svc.producer.flush()
            await eventually(lambda: _true(bridge.processed >= 50), timeout=60)
            temporal.service.stop()
            down_at = time.monotonic()
            for i in range(100, total):
                await svc.producer.send(topic, **_record(svc, order_data(f"o{i}"), f"o{i}"))
            await svc.producer.flush()
            proc = psutil.Process()
            while time.monotonic() - down_at < 20:
                rss.append(proc.memory_info().rss / 2**20)
                await asyncio.sleep(1)
            stuck = bridge.processed
            assert stuck < total
            temporal.start()
            await temporal.wait_ready(60)
            back_at = time.monotonic()
            await eventually(lambda: _true(bridge.processed == total), timeout=120)
            print(f"caught up {time.monotonic() - back_at:.1f}s after Temporal returned")
            ends = await svc.end_offsets(topic)

            async def all_committed() -> bool:
                return await svc.committed(topic) == ends

            await eventually(all_committed, timeout=30)
        client = await connect_temporal(settings)
        assert await eventually(lambda: count_is(client, f"KtbRoute = 'start-{uid}'", total))
        assert await svc.end_offsets(f"{topic}.dlq") == {0: 0}
    finally:
        await svc.stop()
    print(
        f"test process RSS while Temporal was down: max {max(rss):.0f} MiB, min {min(rss):.0f} MiB"
    )
    assert max(rss) - min(rss) < 200


async def test_every_action_kind(services, topics, settings, catalog, client, uid):
    """signal_with_start, update_with_start, cancel and terminate through routes."""
    tq = f"tq-{uid}"
    base = {"workflow": "KtbTestRecorder", "task_queue": tq}
    wid = f"wf-{uid}-{{data.order_id}}"
    cancelled = "com.example.order.cancelled"
    config = routes_config(
        [
            {**base, "name": "sws", "topic": topics["payments"], "type": CONFIRMED,
             "action": "signal_with_start", "workflow_id": wid, "signal": "note"},
            {**base, "name": "uws", "topic": topics["orders"], "type": CONFIRMED,
             "action": "update_with_start", "workflow_id": wid, "update": "add"},
            {"name": "cancel", "topic": topics["orders"], "type": cancelled, "action": "cancel",
             "workflow_id": wid, "when": "data.reason == 'cancel'"},
            {"name": "terminate", "topic": topics["orders"], "type": cancelled,
             "action": "terminate", "workflow_id": wid},
        ]
    )  # fmt: skip
    async with (
        running_worker(settings, catalog, client, tq, [Recorder]),
        running_bridge(settings, catalog, client, config) as bridge,
    ):
        # signal_with_start on a workflow that does not exist yet: started and signalled;
        # the same event again is dropped by the workflow's dedupe.
        for _ in range(2):
            await services.produce(
                topics["payments"], CONFIRMED, confirmed("a", 1), key="a", id=f"a1-{uid}"
            )
        await services.produce(topics["payments"], CONFIRMED, confirmed("a", 2), key="a")
        handle = client.get_workflow_handle(f"wf-{uid}-a")
        await eventually(lambda: _true(bridge.processed == 3))
        assert await handle.query("received") == [1, 2]

        # update_with_start: starts "b" and applies the update once per event id.
        for _ in range(2):
            await services.produce(
                topics["orders"], CONFIRMED, confirmed("b", 5), key="b", id=f"b5-{uid}"
            )
        await eventually(lambda: _true(bridge.processed == 5))
        assert await client.get_workflow_handle(f"wf-{uid}-b").query("received") == [5]
        # Each started workflow's memo says what its first event did (GET /events/{id}
        # answers from it while provenance is not indexed).
        memos = {
            name: await (
                await client.get_workflow_handle(f"wf-{uid}-{name}").describe()
            ).memo_value("ktb")
            for name in ("a", "b")
        }
        assert [(m["route"], m["action"], m["outcome"]) for m in memos.values()] == [
            ("sws", "signal_with_start", "started"),
            ("uws", "update_with_start", "updated"),
        ]

        # cancel "a", terminate "b"; repeating the cancel is a no-op, not a dead letter.
        for _ in range(2):
            await services.produce(
                topics["orders"], cancelled, {"order_id": "a", "reason": "cancel"}, key="a"
            )
        await services.produce(
            topics["orders"], cancelled, {"order_id": "b", "reason": "stop"}, key="b"
        )
        await eventually(lambda: _true(bridge.processed == 8))

        async def closed(wid: str, status: str) -> bool:
            desc = await client.get_workflow_handle(wid).describe()
            return desc.status is not None and desc.status.name == status

        await eventually(lambda: closed(f"wf-{uid}-a", "CANCELED"))
        await eventually(lambda: closed(f"wf-{uid}-b", "TERMINATED"))
    assert await services.end_offsets(f"{topics['orders']}.dlq") == {0: 0}
    assert await services.end_offsets(f"{topics['payments']}.dlq") == {0: 0}


async def test_rejected_actions_are_dead_lettered(services, settings, catalog, client, uid):
    """Temporal rejecting the action (unknown search attribute, missing workflow) → DLQ."""
    from bridge.kafka import ensure_topics

    topic = f"rejected-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(
        [
            start_route(topic, uid, search_attributes={"NoSuchAttribute": "{data.order_id}"}),
            {**note_route(topic, uid), "workflow_id": f"missing-{uid}-{{data.order_id}}"},
        ]
    )
    await services.produce(topic, PLACED, order_data("r1"), key="r1")
    await services.produce(topic, CONFIRMED, confirmed("r1", 1), key="r1")
    async with running_bridge(settings, catalog, client, config):
        letters = await services.read(f"{topic}.dlq", 2)
    assert [dict(r.headers)[ERROR_TYPE] for r in sorted(letters, key=lambda r: r.offset)] == [
        b"action_rejected",
        b"action_rejected",
    ]
    assert await count(client, f"KtbRoute = 'start-{uid}'") == 0
