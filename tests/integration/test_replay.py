"""Replays against real Kafka and Temporal: modes, time ranges, bad input.

Workflows here are started on task queues no worker polls: starting a workflow
needs no worker, and a running workflow is as much a duplicate as a closed one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.admin import RecordsToDelete
from aiokafka.structs import TopicPartition
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from bridge import kafka
from bridge.cli.main import app
from bridge.codec import SchemaCatalog
from bridge.dispatch import Outcome
from bridge.envelope import Event, encode_event
from bridge.errors import ActionRejectedError
from bridge.kafka import ensure_topics
from bridge.observability.metrics import Metrics
from bridge.replay import (
    KnownWorkflows,
    ReplayDispatcher,
    ReplayMode,
    ReplayRequest,
    format_ms,
    resolve_plan,
    run_replay,
)
from bridge.routes import Action, ActionKind
from bridge.settings import Settings
from tests.support import (
    Services,
    count,
    count_is,
    eventually,
    order_data,
    routes_config,
    running_bridge,
    topic_exists,
    write_routes,
)

PLACED = "com.example.order.placed"


def start_route(name: str, topic: str, task_queue: str, id_prefix: str) -> dict[str, Any]:
    """A start route whose workflow ids begin with ``id_prefix``."""
    return {
        "name": name,
        "topic": topic,
        "type": PLACED,
        "action": "start",
        "workflow": "KtbReplayTestNoop",
        "task_queue": task_queue,
        "workflow_id": f"{id_prefix}{{data.order_id}}",
    }


async def produce_orders(
    services: Services, topic: str, ids: list[str], timestamps: list[int] | None = None
) -> None:
    """Produce one order.placed per id (key = id) without waiting for each acknowledgement."""
    sends = []
    for n, order_id in enumerate(ids):
        record = encode_event(
            services.catalog, type=PLACED, data=order_data(order_id), id=f"ev-{order_id}",
            source="tests", key=order_id,
        )  # fmt: skip
        sends.append(
            await services.producer.send(
                topic, value=record.value, key=record.key, headers=record.headers,
                timestamp_ms=timestamps[n] if timestamps else None,
            )
        )  # fmt: skip
    await asyncio.gather(*sends)


async def exists(client: Client, workflow_id: str) -> bool:
    """Whether a workflow with this id exists."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def route_count(client: Client, route: str) -> int:
    """Workflows the bridge started through ``route`` (visibility, eventually consistent)."""
    return await count(client, f"KtbRoute = '{route}'")


async def test_idempotent_fresh_and_dry_run_replays_of_500_processed_events(
    services, topics, settings, catalog: SchemaCatalog, client, uid, tmp_path
) -> None:
    n = 500
    route = f"replay-{uid}"
    prefix = f"rp-{uid}-"
    config = routes_config([start_route(route, topics["orders"], f"none-{uid}", prefix)])
    settings = settings.model_copy(
        update={"routes_file": write_routes(tmp_path / "routes.yaml", config)}
    )
    ids = [f"o{i}" for i in range(n)]
    await produce_orders(services, topics["orders"], ids)
    ends = await services.end_offsets(topics["orders"])
    assert sum(ends.values()) == n

    async with running_bridge(settings, catalog, client, config):

        async def processed() -> bool:
            return await services.committed(topics["orders"]) == ends

        await eventually(processed, timeout=120, interval=0.5)

    async def all_started() -> bool:
        return await route_count(client, route) == n

    await eventually(all_started, timeout=60, interval=0.5)
    request = ReplayRequest(topics["orders"], "earliest")

    idempotent = await run_replay(settings, await resolve_plan(settings, request), client=client)
    assert idempotent.read == n and idempotent.matched == n
    assert idempotent.started == 0
    assert idempotent.duplicates == n
    assert idempotent.dead_lettered == 0 and idempotent.skipped == 0

    dry_request = ReplayRequest(
        topics["orders"], "earliest", mode=ReplayMode.FRESH, dry_run=True
    ).with_generation()
    dry = await run_replay(settings, await resolve_plan(settings, dry_request))
    assert dry.read == n and dry.would_act == n
    assert dry.started == 0 and dry.duplicates == 0
    assert dry.per_route == {route: {"start": n}}
    example = dry.examples[route]
    assert example.endswith(dry_request.id_suffix)
    assert not await exists(client, example)
    assert not await exists(client, f"{prefix}o0{dry_request.id_suffix}")

    fresh_request = ReplayRequest(topics["orders"], "earliest", mode=ReplayMode.FRESH)
    fresh_request = fresh_request.with_generation()
    fresh = await run_replay(settings, await resolve_plan(settings, fresh_request), client=client)
    # A start that timed out on the client but reached Temporal is a duplicate when retried:
    # each record still has exactly one new workflow (counted below).
    assert fresh.read == n and fresh.started + fresh.duplicates == n and fresh.started > 0
    assert await exists(client, f"{prefix}o0{fresh_request.id_suffix}")
    assert await exists(client, f"{prefix}o{n - 1}{fresh_request.id_suffix}")

    async def twice_as_many() -> bool:
        return await route_count(client, route) == 2 * n

    await eventually(twice_as_many, timeout=60, interval=0.5)
    # The replays read without a group: the bridge's committed offsets did not move.
    assert await services.committed(topics["orders"]) == ends


async def test_time_range_selects_exactly_the_records_inside_it(
    services, topics, settings, client, uid, tmp_path
) -> None:
    route = f"time-{uid}"
    prefix = f"rt-{uid}-"
    config = routes_config([start_route(route, topics["orders"], f"none-{uid}", prefix)])
    settings = settings.model_copy(
        update={"routes_file": write_routes(tmp_path / "routes.yaml", config)}
    )
    base = int(time.time() * 1000) - 3_600_000
    before = {"a0": base, "a1": base + 500, "a2": base + 999}
    inside = {"b0": base + 1000, "b1": base + 1001, "b2": base + 1500, "b3": base + 1999}
    after = {"c0": base + 2000, "c1": base + 2500}
    stamps = {**before, **inside, **after}
    await produce_orders(services, topics["orders"], list(stamps), list(stamps.values()))

    request = ReplayRequest(topics["orders"], format_ms(base + 1000), format_ms(base + 2000))
    plan = await resolve_plan(settings, request)
    metrics = Metrics()
    report = await run_replay(settings, plan, client=client, metrics=metrics)

    assert report.read == len(inside) and report.started + report.duplicates == len(inside)
    # The replay's calls count in Temporal's answer times, one answered start per record.
    answered = metrics.registry.get_sample_value(
        "ktb_temporal_call_seconds_count", {"action": "start"}
    )
    assert answered == len(inside)
    started = {oid for oid in stamps if await exists(client, prefix + oid)}
    assert started == set(inside)


def _cli(settings: Settings, *args: str) -> Any:
    env = {
        "KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KTB_TEMPORAL_ADDRESS": settings.temporal_address,
        "KTB_ROUTES_FILE": str(settings.routes_file),
    }
    return CliRunner().invoke(app, list(args), env=env)


def test_bad_input_is_a_clear_error_exit_2_and_nothing_is_acted_on(
    settings, catalog, uid, tmp_path
) -> None:
    topic = f"replay-bad-{uid}"
    route = f"bad-{uid}"
    prefix = f"rb-{uid}-"
    config = routes_config([start_route(route, topic, f"none-{uid}", prefix)])
    settings = settings.model_copy(
        update={"routes_file": write_routes(tmp_path / "routes.yaml", config)}
    )

    async def prepare() -> None:
        await ensure_topics(settings, {topic: 2, f"{topic}.dlq": 1})
        producer = kafka.producer(settings)
        await producer.start()
        try:
            for i in range(6):
                record = encode_event(
                    catalog, type=PLACED, data=order_data(f"o{i}"), id=f"ev-{uid}-{i}",
                    source="tests", key=f"o{i}",
                )  # fmt: skip
                await producer.send_and_wait(
                    topic, value=record.value, key=record.key, headers=record.headers, partition=0
                )
        finally:
            await producer.stop()
        admin = kafka.admin(settings)
        await admin.start()
        try:
            # Retention at work: the first three records of partition 0 are gone.
            await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(3)})
        finally:
            await admin.close()

    asyncio.run(prepare())
    cases = [
        (["--from", "5", "--to", "2"], "is after --to"),
        (["--from", "2030-01-01T00:00:00Z", "--to", "2020-01-01T00:00:00Z"], "is after --to"),
        (["--topic", f"nope-{uid}", "--from", "0"], "does not exist"),
        (["--partition", "7", "--from", "earliest"], "no partition 7"),
        (["--from", "2000-01-01T00:00:00Z"], "before the retention of partition 0"),
        (["--from", "1"], "before the oldest offset partition 0"),
        (["--from", "2099-01-01T00:00:00Z"], "selects no records"),
        (["--partition", "1", "--from", "earliest"], "selects no records"),
        (["--from", "earliest", "--route", "nope"], "unknown route"),
        (["--from", "yesterday"], "is not an offset"),
        (["--from", "earliest", "--mode", "again"], "--mode"),
    ]
    for args, message in cases:
        if "--topic" not in args:
            args = ["--topic", topic, *args]
        result = _cli(settings, "replay", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not asyncio.run(topic_exists(settings, f"nope-{uid}"))  # asking created nothing
    ok = _cli(settings, "replay", "--topic", topic, "--from", "earliest", "--dry-run")
    assert ok.exit_code == 0, ok.output
    assert "read 3" in ok.output and "would-act 3" in ok.output
    assert f"{route}: start 3" in ok.output

    async def none_started() -> list[str]:
        client = await Client.connect(settings.temporal_address)
        return [i for i in range(6) if await exists(client, f"{prefix}o{i}")]

    assert asyncio.run(none_started()) == []


def test_cli_fresh_replay_prints_the_report_and_generation(
    settings, catalog, uid, tmp_path
) -> None:
    topic = f"replay-cli-{uid}"
    route = f"cli-{uid}"
    prefix = f"rc-{uid}-"
    config = routes_config([start_route(route, topic, f"none-{uid}", prefix)])
    settings = settings.model_copy(
        update={"routes_file": write_routes(tmp_path / "routes.yaml", config)}
    )

    async def prepare() -> None:
        await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
        producer = kafka.producer(settings)
        await producer.start()
        try:
            for i in range(3):
                record = encode_event(
                    catalog, type=PLACED, data=order_data(f"o{i}"), id=f"ev-{uid}-{i}",
                    source="tests", key=f"o{i}",
                )  # fmt: skip
                await producer.send_and_wait(
                    topic, value=record.value, key=record.key, headers=record.headers
                )
        finally:
            await producer.stop()

    asyncio.run(prepare())
    result = _cli(settings, "replay", "--topic", topic, "--from", "0", "--mode", "fresh")
    assert result.exit_code == 0, result.output
    assert "read 3" in result.output and "started 3" in result.output
    generation = next(
        line.split()[1] for line in result.output.splitlines() if line.startswith("generation:")
    )

    async def started() -> list[bool]:
        client = await Client.connect(settings.temporal_address)
        return [await exists(client, f"{prefix}o{i}-replay-{generation}") for i in range(3)]

    assert asyncio.run(started()) == [True, True, True]


async def test_idempotent_replays_answer_existing_starts_from_visibility(client, uid) -> None:
    task_queue = f"none-{uid}"
    existing = [f"rv-{uid}-{n}" for n in range(3)]
    for workflow_id in existing:
        await client.start_workflow("KtbReplayTestNoop", id=workflow_id, task_queue=task_queue)

    await eventually(lambda: count_is(client, f"TaskQueue = '{task_queue}'", len(existing)))
    known = KnownWorkflows(client)
    dispatcher = ReplayDispatcher(client, 8, known=known)
    event = Event(id=f"ev-{uid}", type=PLACED, source="tests", data={})

    def start(workflow_id: str, **extra: Any) -> Action:
        return Action(
            kind=ActionKind.START, route="r", workflow_id=workflow_id, event_id=event.id,
            workflow_type="KtbReplayTestNoop", task_queue=task_queue, **extra,
        )  # fmt: skip

    results = await asyncio.gather(*(dispatcher.execute(start(w), event) for w in existing))
    assert [(r.outcome, r.detail) for r in results] == [(Outcome.DUPLICATE, "already exists")] * 3
    assert all(r.run_id for r in results)
    new = await dispatcher.execute(start(f"rv-{uid}-new"), event)
    assert new.outcome is Outcome.STARTED
    # A route that dead-letters duplicates takes the live path, and the live answer.
    with pytest.raises(ActionRejectedError):
        await dispatcher.execute(start(existing[0], on_duplicate="dead_letter"), event)
