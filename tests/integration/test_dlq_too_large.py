"""A record too large to copy to its DLQ: the letter carries its coordinates, nothing blocks."""

from __future__ import annotations

import json
import os

from bridge import dlq, kafka
from bridge.dlq import dead_letters, redrive
from bridge.envelope import encode_event
from tests.integration.dlq_support import create_topic, read_to_end
from tests.integration.test_dlq import ktb, start_route
from tests.integration.test_replay import PLACED
from tests.support import eventually, order_data, routes_config, running_bridge

FIVE_MB = 5 * 1024 * 1024
TOO_LARGE = "too_large_to_copy"


async def test_a_record_too_large_to_copy_is_dead_lettered_by_its_coordinates(
    services, settings, catalog, client, uid
) -> None:
    orders = f"big-{uid}"
    dlq_topic = orders + dlq.SUFFIX
    tenant = f"t-{uid}"
    # The topic takes 5 MB records; its DLQ keeps the broker default (about 1 MB).
    await create_topic(settings, orders, configs={"max.message.bytes": str(FIVE_MB)})
    await create_topic(settings, dlq_topic)
    prefix = f"tl-{uid}-"
    config = routes_config(
        [start_route(orders, f"none-{uid}", prefix, "data.total_cents > 0")], "dead_letter"
    )

    # 1: ~1.5 MB of data behind an unknown schema fingerprint (decode error).
    unknown = b"\xc3\x01" + os.urandom(8) + os.urandom(1_500_000)
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", f"huge-{uid}".encode()), ("ce_source", b"tests"),
        ("ce_type", PLACED.encode()), ("content-type", b"application/avro"),
        ("ce_tenantid", tenant.encode()),
    ]  # fmt: skip
    # 2: a valid ~1.2 MB order that no route takes (total 0: unmatched).
    big_order = {**order_data("huge-2", total=0), "customer_id": "c" * 1_200_000}
    valid = encode_event(
        catalog, type=PLACED, data=big_order, id=f"huge2-{uid}", source="tests", key="huge-2",
        tenant_id=tenant,
    )  # fmt: skip
    producer = kafka.producer(settings, max_request_size=FIVE_MB)
    await producer.start()
    try:
        await producer.send_and_wait(orders, unknown, key=b"huge-1", headers=headers)
        await producer.send_and_wait(orders, valid.value, key=valid.key, headers=valid.headers)
    finally:
        await producer.stop()
    # Records after them on the same partition must still be processed.
    for n in range(3):
        await services.produce(orders, PLACED, order_data(f"after-{n}"), key=f"after-{n}")
    ends = await services.end_offsets(orders)

    async with running_bridge(settings, catalog, client, config):

        async def all_committed() -> bool:
            return await services.committed(orders) == ends

        await eventually(all_committed, timeout=90)

    letters = await dead_letters(settings, dlq_topic)
    assert [x.error_type for x in letters] == [TOO_LARGE] * 2
    first, second = letters
    assert (first.original_error_type, second.original_error_type) == (
        "unknown_schema",
        "unmatched",
    )
    assert "fingerprint" in (first.original_error_message or "")
    assert (first.original_partition, first.original_offset) == (0, 0)
    assert (second.original_partition, second.original_offset) == (0, 1)
    assert first.key == b"huge-1" and first.value == b"" and not first.holds_record
    assert first.summary()["event_id"] == f"huge-{uid}" and first.tenant == tenant
    assert second.summary()["event_type"] == PLACED and second.tenant == tenant
    assert (first.original_size or 0) > 1_500_000
    assert len((first.error_message or "").encode()) <= dlq.MAX_MESSAGE_BYTES
    # Tenant filtering still works on such letters.
    assert len(await dead_letters(settings, dlq_topic, tenant=tenant)) == 2
    assert await dead_letters(settings, dlq_topic, tenant=f"other-{uid}") == []

    # `dlq show` reads the original from its topic.
    code, out, err = await ktb(settings, "dlq", "show", dlq_topic, "0:1")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["original_record"]["found"] is True
    assert shown["data"]["customer_id"] == "c" * 1_200_000
    assert shown["headers"]["ce_id"] == f"huge2-{uid}"
    code, out, err = await ktb(settings, "dlq", "show", dlq_topic, "0:0")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["original_record"] == {
        "topic": orders, "partition": 0, "offset": 0, "found": True, "problem": None,
    }  # fmt: skip
    assert shown["value_size"] == len(unknown) and "data_error" in shown
    assert shown["value_hex_truncated"] is True

    # Redrive republishes the original bytes, read back from the original topic.
    report = await redrive(settings, dlq_topic)
    assert [(m.dlq_offset, m.topic, m.redrive_count) for m in report.redriven] == [
        (0, orders, 1),
        (1, orders, 1),
    ]
    records = await read_to_end(settings, orders)
    republished = [r for r in records if r.offset >= ends[0]]
    assert [r.value for r in republished] == [unknown, valid.value]
    assert [r.key for r in republished] == [b"huge-1", b"huge-2"]
    for record, ref in zip(republished, ("0:0", "0:1"), strict=True):
        got = dict(record.headers)
        assert got[dlq.REDRIVE_COUNT] == b"1"
        assert got[dlq.REDRIVE_OF] == f"{dlq_topic}:{ref}".encode()
        assert got["ce_tenantid"] == tenant.encode()
        assert not set(got) & dlq.LETTER_HEADERS

    # Failing again, the republished record comes back as a letter with its count. (The
    # partition's end offset is now one past its last record, the transaction's commit
    # marker, and the bridge commits up to it.)
    last = await services.end_offsets(orders)
    assert last == {0: republished[-1].offset + 2}
    async with running_bridge(settings, catalog, client, config):

        async def again_committed() -> bool:
            return await services.committed(orders) == last

        await eventually(again_committed, timeout=90)
    letters = await dead_letters(settings, dlq_topic)
    assert [(x.error_type, x.redrive_count) for x in letters[2:]] == [
        (TOO_LARGE, 1),
        (TOO_LARGE, 1),
    ]
    assert letters[2].original_offset == republished[0].offset


def test_error_text_is_bounded_in_bytes_at_a_character_boundary() -> None:
    text = "é" * 5000  # two bytes each
    raw = dlq.bounded(text, 2001)
    assert len(raw) == 2000 and raw.decode("utf-8") == "é" * 1000
    assert dlq.bounded("short") == b"short"
