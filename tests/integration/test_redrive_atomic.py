"""Redrive is atomic: concurrent redrives, or one that dies half-way, republish a letter once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from bridge import dlq
from bridge.dlq import REDRIVES_TOPIC, RedriveReport, dead_letters, redrive
from bridge.envelope import encode_event
from bridge.settings import Settings
from tests.integration.dlq_support import letter_headers, read_to_end
from tests.integration.test_dlq import ktb, start_route
from tests.integration.test_replay import PLACED, exists
from tests.support import Services, eventually, order_data, routes_config, running_bridge

LETTERS = 6


async def write_letters(services: Services, orders: str, dlq_topic: str, uid: str) -> None:
    """Dead letters of valid orders, as a bridge whose route did not match wrote them.

    The originals are not in ``orders``: only what a redrive republishes is there.
    """
    for n in range(LETTERS):
        record = encode_event(
            services.catalog, type=PLACED, data=order_data(f"o{n}"), id=f"ev-{uid}-{n}",
            source="tests", key=f"o{n}",
        )  # fmt: skip
        headers = letter_headers(record.headers, orders, n % 3, 1000 + n)
        await services.produce_raw(dlq_topic, record.value, headers, key=record.key)
    await eventually(lambda: _count(services.settings, dlq_topic, LETTERS))


async def _count(settings: Settings, topic: str, count: int) -> bool:
    return len(await read_to_end(settings, topic)) == count


def redriven_ids(records: list[Any]) -> list[str]:
    """The event ids of the republished records, in no particular order."""
    return sorted(dict(r.headers)["ce_id"].decode() for r in records)


async def test_concurrent_redrives_republish_each_letter_once(
    services, topics, settings, catalog, client, uid
) -> None:
    orders, dlq_topic = topics["orders"], topics["orders"] + dlq.SUFFIX
    await write_letters(services, orders, dlq_topic, uid)

    # Three redrives of the same letters at once: two in this process, one through the CLI.
    first, second, cli = await asyncio.gather(
        redrive(settings, dlq_topic),
        redrive(settings, dlq_topic),
        ktb(settings, "dlq", "redrive", dlq_topic, "--json"),
    )
    code, out, err = cli
    assert code == 0, err
    third = json.loads(out)
    sent = [m.dlq_offset for m in first.redriven + second.redriven]
    sent += [m["dlq_offset"] for m in third["redriven"]]
    assert sorted(sent) == list(range(LETTERS)), (first, second, third)
    skipped = first.already + second.already + third["already_redriven"]
    assert sorted(skipped) == sorted(f"0:{n}" for n in range(LETTERS) for _ in range(2))

    # The original topic holds each letter's record once, as the bridge reads it.
    records = await read_to_end(settings, orders)
    expected = sorted(f"ev-{uid}-{n}" for n in range(LETTERS))
    assert redriven_ids(records) == expected
    for record in records:
        ref = dict(record.headers)[dlq.REDRIVE_OF].decode()
        assert ref.startswith(dlq_topic + ":0:")

    # Starting them with `on_duplicate: dead_letter`, no second copy comes back as a letter.
    prefix = f"ra-{uid}-"
    route = {**start_route(orders, f"none-{uid}", prefix, None), "on_duplicate": "dead_letter"}
    # The bridge commits up to the end offsets, past the redrive's commit markers.
    ends = await services.end_offsets(orders)
    async with running_bridge(settings, catalog, client, routes_config([route])):

        async def all_handled() -> bool:
            return await services.committed(orders) == ends

        await eventually(all_handled, timeout=60)
    assert all([await exists(client, f"{prefix}o{n}") for n in range(LETTERS)])
    assert len(await dead_letters(settings, dlq_topic)) == LETTERS
    again = await redrive(settings, dlq_topic)
    assert again.redriven == [] and len(again.already) == LETTERS


class Crash(Exception):
    """The redrive process dies here."""


async def test_a_redrive_that_dies_before_its_marks_leaves_nothing_for_the_next_to_repeat(
    services, topics, settings, uid, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders, dlq_topic = topics["orders"], topics["orders"] + dlq.SUFFIX
    await write_letters(services, orders, dlq_topic, uid)
    send = AIOKafkaProducer.send

    async def dies_at_the_marks(self: AIOKafkaProducer, topic: str, *args: Any, **kw: Any) -> Any:
        if topic == REDRIVES_TOPIC:
            raise Crash
        return await send(self, topic, *args, **kw)

    monkeypatch.setattr(AIOKafkaProducer, "send", dies_at_the_marks)
    with pytest.raises(Crash):
        await redrive(settings, dlq_topic)
    monkeypatch.setattr(AIOKafkaProducer, "send", send)

    report: RedriveReport = await redrive(settings, dlq_topic)
    assert sorted(m.dlq_offset for m in report.redriven) == list(range(LETTERS))
    records = await read_to_end(settings, orders)
    assert redriven_ids(records) == sorted(f"ev-{uid}-{n}" for n in range(LETTERS))
