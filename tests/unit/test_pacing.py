"""Rate limits: the token bucket on an injected clock, waiting, giving up on a close, and
the engine leaving a record waiting for a token not done when its partition closes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.codec import SchemaCatalog
from bridge.errors import Abandoned
from bridge.observability.metrics import Metrics
from bridge.pacing import RateLimits, RateLimitSpec, TokenBucket
from tests.support import (
    MemoryKafka,
    RecordingDispatcher,
    consuming,
    memory_ingress,
    memory_settings,
    order_data,
    routes_config,
    until,
)


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def waited(metrics: Metrics, route: str) -> float:
    found = metrics.registry.get_sample_value("ktb_rate_limited_seconds_total", {"route": route})
    return found or 0.0


def test_a_full_bucket_serves_its_burst_at_once_then_one_token_per_interval() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=5, capacity=5, clock=clock)
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    # Each further action waits one more interval (0.2 s) than the one before it.
    assert [round(bucket.reserve(), 6) for _ in range(3)] == [0.2, 0.4, 0.6]
    clock.now += 0.6  # the three reserved tokens have come in: the bucket is empty
    assert round(bucket.reserve(), 6) == 0.2


def test_the_bucket_refills_to_its_capacity_only() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, capacity=3, clock=clock)
    for _ in range(3):
        bucket.reserve()
    clock.now += 60  # a minute idle earns three tokens, not 120
    assert [bucket.reserve() for _ in range(3)] == [0.0] * 3
    assert bucket.reserve() == 0.5


def test_a_refunded_token_serves_the_next_action() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, capacity=1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == 1.0
    bucket.refund()
    assert bucket.reserve() == 1.0


def test_burst_defaults_to_one_seconds_worth() -> None:
    assert RateLimitSpec(per_second=50).capacity == 50
    assert RateLimitSpec(per_second=0.5).capacity == 1
    assert RateLimitSpec(per_second=2.5, burst=10).capacity == 10
    with pytest.raises(ValueError):
        RateLimitSpec(per_second=float("inf"))


async def test_over_the_limit_an_action_waits_and_the_wait_is_counted() -> None:
    metrics = Metrics()
    limits = RateLimits(metrics)
    spec = RateLimitSpec(per_second=50, burst=1)
    await limits.acquire("r", spec)
    assert waited(metrics, "r") == 0.0  # the burst is free
    await limits.acquire("r", spec)
    assert waited(metrics, "r") > 0.0
    assert waited(metrics, "other") == 0.0


async def test_a_close_ends_the_wait_and_gives_the_token_back() -> None:
    metrics = Metrics()
    clock = Clock()
    limits = RateLimits(metrics, clock)
    spec = RateLimitSpec(per_second=0.001, burst=1)  # the next token is 1000 s away
    await limits.acquire("r", spec)
    closed = asyncio.Event()
    waiting = asyncio.create_task(limits.acquire("r", spec, closed))
    await asyncio.sleep(0)
    clock.now += 2.5
    closed.set()
    with pytest.raises(Abandoned):
        await asyncio.wait_for(waiting, 5)
    assert waited(metrics, "r") == 2.5
    assert limits.buckets["r"].tokens == pytest.approx(0.0025)  # refunded, plus 2.5 s of refill


# --- on the engine --------------------------------------------------------------------

TOPIC = "orders"
LIMITED = routes_config(
    [
        {
            "name": "start-order", "topic": TOPIC, "type": "com.example.order.placed",
            "action": "start", "workflow": "OrderFulfillment", "task_queue": "orders",
            "workflow_id": "order-{data.order_id}",
            "rate_limit": {"per_second": 0.001, "burst": 2},  # two now, the next in 1000 s
        }
    ]
)  # fmt: skip


async def test_records_waiting_for_a_token_stay_not_done_when_the_bridge_stops(
    memory_kafka: MemoryKafka, catalog: SchemaCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    memory_kafka.create(TOPIC, 1)
    for n in range(5):
        memory_kafka.produce_event(
            catalog, TOPIC, "com.example.order.placed", order_data(f"o-{n}"), key=f"o-{n}"
        )
    dispatcher = RecordingDispatcher()
    ingress = memory_ingress(catalog, LIMITED, dispatcher, memory_kafka)
    s = memory_settings()
    caplog.set_level(logging.WARNING, "ktb.engine")
    async with consuming(memory_kafka, s, ingress):
        await until(lambda: memory_kafka.group_committed(s.group_id, TOPIC) == {0: 2})
        assert ingress.rate_limits is not None
        bucket = ingress.rate_limits.buckets["start-order"]
        await until(lambda: bucket.tokens < -2.9)  # the other three reserved theirs
    # Stopping drained the partition: the three waiting records gave up at once (no
    # key task had to be cancelled) and were neither acted on nor committed.
    assert [c.event.key for c in dispatcher.acted] == ["o-0", "o-1"]
    assert memory_kafka.group_committed(s.group_id, TOPIC) == {0: 2}
    assert "abandoned" not in caplog.text
    assert waited(ingress.metrics, "start-order") > 0
    assert (
        ingress.metrics.registry.get_sample_value("ktb_transient_retries_total", {"topic": TOPIC})
        is None
    )
