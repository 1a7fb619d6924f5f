"""Dead letters against real Kafka and Temporal: fix a route and redrive, redrive counts, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from typer.testing import CliRunner

from bridge import dlq, kafka
from bridge.cli.main import app
from bridge.dlq import LetterRef, dead_letters, redrive
from bridge.kafka import ensure_topics
from bridge.settings import Settings
from tests.integration.test_replay import PLACED, exists, produce_orders
from tests.support import eventually, order_data, routes_config, running_bridge, topic_exists

POISON_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"poison-1"),
    ("ce_source", b"tests"),
    ("ce_type", PLACED.encode()),
    ("content-type", b"application/avro"),
]


def start_route(topic: str, task_queue: str, prefix: str, when: str | None) -> dict[str, Any]:
    """The start route of these tests, with an optional condition."""
    route: dict[str, Any] = {
        "name": "start",
        "topic": topic,
        "type": PLACED,
        "action": "start",
        "workflow": "KtbDlqTestNoop",
        "task_queue": task_queue,
        "workflow_id": f"{prefix}{{data.order_id}}",
    }
    if when:
        route["when"] = when
    return route


async def ktb(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run ``ktb`` as a separate process; return its exit code, stdout and stderr."""
    env = dict(os.environ)
    env.update(
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_TEMPORAL_ADDRESS=settings.temporal_address,
        # As `ktb dev` runs its processes: unbuffered standard streams (bridge.stdio).
        PYTHONUNBUFFERED="1",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_fix_the_route_then_redrive_processes_the_poisoned_events(
    services, topics, settings, catalog, client, uid
) -> None:
    orders, dlq_topic = topics["orders"], topics["orders"] + ".dlq"
    prefix = f"dq-{uid}-"
    # The broken route wants totals above 1000; small orders have no route and are dead-lettered.
    broken = routes_config(
        [start_route(orders, f"none-{uid}", prefix, "data.total_cents > 1000")], "dead_letter"
    )
    fixed = routes_config([start_route(orders, f"none-{uid}", prefix, None)], "dead_letter")
    await produce_orders(services, orders, ["big-1", "big-2", "big-3"])
    for small in ("small-1", "small-2"):
        await services.produce(orders, PLACED, order_data(small, total=500), key=small)
    ends = await services.end_offsets(orders)

    async with running_bridge(settings, catalog, client, broken):

        async def all_handled() -> bool:
            return await services.committed(orders) == ends

        await eventually(all_handled, timeout=60)

    letters = await dead_letters(settings, dlq_topic)
    assert len(letters) == 2
    assert {x.error_type for x in letters} == {"unmatched"}
    assert all(x.redriven is None and x.redrive_count == 0 for x in letters)
    originals = {(r.partition, r.offset): r for r in await services.read(orders, 5)}
    for letter in letters:
        original = originals[(letter.original_partition, letter.original_offset)]
        assert letter.original_topic == orders
        assert letter.key == original.key and letter.value == original.value
    assert not await exists(client, prefix + "small-1")

    async with running_bridge(settings, catalog, client, fixed):
        code, out, err = await ktb(settings, "dlq", "redrive", dlq_topic)
        assert code == 0, err
        assert "2 redriven" in out

        async def small_orders_started() -> bool:
            return await exists(client, prefix + "small-1") and await exists(
                client, prefix + "small-2"
            )

        await eventually(small_orders_started, timeout=60)

    letters = await dead_letters(settings, dlq_topic)
    assert len(letters) == 2
    assert all(x.redriven is not None and x.redriven.topic == orders for x in letters)
    code, out, err = await ktb(settings, "dlq", "list", dlq_topic)
    assert code == 0, err
    assert out.count("redriven to " + orders) == 2
    again = await redrive(settings, dlq_topic)
    assert again.redriven == [] and len(again.already) == 2


async def test_a_letter_that_fails_again_comes_back_counted_until_the_maximum(
    services, topics, settings, catalog, client, uid
) -> None:
    orders, dlq_topic = topics["orders"], topics["orders"] + ".dlq"
    config = routes_config([start_route(orders, f"none-{uid}", f"dc-{uid}-", None)])
    await services.produce_raw(orders, b"\xc3\x01garbage", POISON_HEADERS, key=b"k-1")

    async def letter_with_count(count: int) -> Any:
        letters = await dead_letters(settings, dlq_topic)
        found = [x for x in letters if x.redrive_count == count]
        assert len(found) == 1, [x.summary() for x in letters]
        return found[0]

    async with running_bridge(settings, catalog, client, config):
        first = await eventually(lambda: letter_with_count(0))
        assert first.error_type == "decode_error"
        report = await redrive(settings, dlq_topic, max_redrives=2)
        assert [m.redrive_count for m in report.redriven] == [1]
        second = await eventually(lambda: letter_with_count(1))
        # The first letter was redriven already: only the new one goes out.
        report = await redrive(settings, dlq_topic, max_redrives=2)
        assert [m.redrive_count for m in report.redriven] == [1 + 1]
        assert report.already == [str(first.ref)]
        third = await eventually(lambda: letter_with_count(2))

    refused = await redrive(settings, dlq_topic, refs=[third.ref], max_redrives=2)
    assert refused.redriven == [] and len(refused.refused) == 1
    assert "maximum 2" in refused.refused[0]["reason"]
    code, out, _ = await ktb(settings, "dlq", "redrive", dlq_topic, "--max-redrives", "2")
    assert code == 1 and "refused" in out

    # What was republished: the original key, value and headers plus the count, no error headers.
    republished = [r for r in await services.read(orders, 3) if r.offset > 0]
    assert len(republished) == 2
    for n, record in enumerate(sorted(republished, key=lambda r: r.offset), 1):
        headers = dict(record.headers)
        assert record.key == b"k-1" and record.value == b"\xc3\x01garbage"
        assert headers[dlq.REDRIVE_COUNT] == str(n).encode()
        assert headers["ce_id"] == b"poison-1"
        assert not set(headers) & dlq.ERROR_HEADERS
    assert (dlq.REDRIVE_COUNT, b"1") in second.headers
    assert (dlq.REDRIVE_OF, f"{dlq_topic}:{first.ref}".encode()) in second.headers


async def test_a_record_dead_lettered_twice_is_listed_as_a_copy_and_redriven_once(
    services, topics, settings, uid
) -> None:
    """A redelivered record dead-lettered again (a bridge killed before its commit)."""
    orders, dlq_topic = topics["orders"], topics["orders"] + ".dlq"

    def letter(offset: int) -> list[tuple[str, bytes]]:
        return [*POISON_HEADERS, (dlq.ERROR_TYPE, b"decode_error"),
                (dlq.ERROR_MESSAGE, b"data is not Avro"), (dlq.ORIGINAL_TOPIC, orders.encode()),
                (dlq.ORIGINAL_PARTITION, b"1"), (dlq.ORIGINAL_OFFSET, str(offset).encode()),
                (dlq.FAILED_AT, b"2026-11-26T00:00:00+00:00")]  # fmt: skip

    for offset in (7, 7, 9):  # offset 7 dead-lettered twice, 9 once
        value = f"garbage at {offset}".encode()
        await services.produce_raw(dlq_topic, value, letter(offset), key=b"k")
    letters = await eventually(lambda: _letters(settings, dlq_topic, 3))
    assert [x.summary()["copy_of"] for x in letters] == [None, "0:0", None]

    code, out, err = await ktb(settings, "dlq", "list", dlq_topic)
    assert code == 0 and "[copy of 0:0]" in out, (out, err)

    report = await redrive(settings, dlq_topic)
    assert [(m.dlq_offset, m.redrive_count) for m in report.redriven] == [(0, 1), (2, 1)]
    assert report.copies == ["0:1"] and report.refused == []
    # Asked for by its place, a copy is still skipped; the first letter stands for it.
    again = await redrive(settings, dlq_topic, refs=[LetterRef(0, 1)], again=True)
    assert again.redriven == [] and again.copies == ["0:1"]
    republished = await services.read(orders, 3, timeout=5)
    assert sorted(r.value for r in republished) == [b"garbage at 7", b"garbage at 9"]


async def _letters(settings: Settings, dlq_topic: str, count: int) -> list[Any]:
    letters = await dead_letters(settings, dlq_topic)
    assert len(letters) == count
    return letters


def test_dlq_cli_list_show_and_bad_input(settings, uid) -> None:
    topic = f"dlq-cli-{uid}"
    dlq_topic = topic + ".dlq"

    async def prepare() -> None:
        await ensure_topics(settings, {topic: 1, dlq_topic: 1})
        producer = kafka.producer(settings)
        await producer.start()
        try:
            headers = [
                *POISON_HEADERS,
                (dlq.ERROR_TYPE, b"decode_error"),
                (dlq.ERROR_MESSAGE, b"data is not Avro"),
                (dlq.ORIGINAL_TOPIC, topic.encode()),
                (dlq.ORIGINAL_PARTITION, b"0"),
                (dlq.ORIGINAL_OFFSET, b"41"),
                (dlq.FAILED_AT, b"2026-01-01T00:00:00+00:00"),
            ]
            await producer.send_and_wait(dlq_topic, value=b"\x00", key=b"k", headers=headers)
        finally:
            await producer.stop()

    asyncio.run(prepare())
    env = {"KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    runner = CliRunner()
    listed = runner.invoke(app, ["dlq", "list", dlq_topic], env=env)
    assert listed.exit_code == 0, listed.output
    assert "decode_error" in listed.output and f"{topic}[0]@41" in listed.output
    shown = runner.invoke(app, ["dlq", "show", dlq_topic, "0"], env=env)
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert detail["error_message"] == "data is not Avro" and detail["original_offset"] == 41
    assert detail["headers"]["ce_id"] == "poison-1" and "data_error" in detail
    as_json = runner.invoke(app, ["dlq", "list", dlq_topic, "--json"], env=env)
    assert json.loads(as_json.output.splitlines()[0])["event_id"] == "poison-1"
    for args, message in [
        (["dlq", "list", f"nope-{uid}.dlq"], "does not exist"),
        (["dlq", "list", topic], "not a dead-letter topic"),
        (["dlq", "show", dlq_topic, "7"], "no dead letter at 0:7"),
        (["dlq", "redrive", dlq_topic, "--offsets", "0,x"], "not a dead-letter offset"),
        (["dlq", "redrive", dlq_topic, "--offsets", "3"], "no dead letter at 0:3"),
    ]:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not asyncio.run(topic_exists(settings, f"nope-{uid}.dlq"))  # asking created nothing
    assert LetterRef(0, 0) in {x.ref for x in asyncio.run(dead_letters(settings, dlq_topic))}
