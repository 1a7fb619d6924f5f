"""Benchmark helpers of pure logic: pacing of direct calls, the exactly-once check of a
round's workflows, the per-event CPU figures of the scale scenario, and the raw rate a
bridge round is compared with."""

from __future__ import annotations

import asyncio
import math

import pytest

from bench.common import check_starts, paced
from bench.direct import DirectRun
from bench.scale import BridgeShare, Round
from bench.throughput import interpolated, rounds_note


class FrozenClock:
    """A clock that never moves: every reservation is due later than the one before."""

    def __call__(self) -> float:
        return 50.0


async def test_paced_calls_are_due_one_per_interval_and_bounded_in_concurrency() -> None:
    delays: list[float] = []
    called: list[int] = []
    in_flight = 0
    most_in_flight = 0

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    async def call(item: int) -> None:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        called.append(item)

    made = await paced(range(20), call, rate=4.0, concurrency=3, clock=FrozenClock(), sleep=sleep)

    assert made == 20
    assert sorted(called) == list(range(20))
    # The first call goes at once; the n-th is due n / rate seconds after it.
    assert sorted(delays) == pytest.approx([n / 4.0 for n in range(1, 20)])
    assert most_in_flight == 3


async def test_paced_calls_share_one_schedule_across_callers() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async def call(item: int) -> None:
        return None

    made = await paced(range(5), call, rate=10.0, concurrency=8, clock=FrozenClock(), sleep=sleep)

    assert made == 5
    assert sorted(delays) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_every_expected_id_once_is_exactly_once() -> None:
    check = check_starts(["a", "b", "c"], ["c", "a", "b"])

    assert check.exactly_once
    assert (check.expected, check.listed) == (3, 3)
    check.raise_unless_exactly_once("round")


def test_missing_duplicated_and_unexpected_ids_are_named() -> None:
    check = check_starts(["a", "b", "c", "d"], ["a", "a", "c", "x"])

    assert not check.exactly_once
    assert check.missing == ("b", "d")
    assert check.duplicated == ("a",)
    assert check.unexpected == ("x",)
    with pytest.raises(RuntimeError) as raised:
        check.raise_unless_exactly_once("scale, 2 bridges")
    message = str(raised.value)
    assert message.startswith("scale, 2 bridges: 4 workflows listed for 4 events")
    assert "2 missing (e.g. b, d)" in message
    assert "1 started more than once (e.g. a)" in message
    assert "1 not expected (e.g. x)" in message


def test_a_count_that_matches_can_still_hide_a_duplicate() -> None:
    # As many executions as events, yet one id twice and another never.
    check = check_starts(["a", "b"], ["a", "a"])

    assert check.listed == check.expected
    assert check.missing == ("b",)
    assert check.duplicated == ("a",)


def test_cpu_per_event_of_a_round_weights_each_bridge_by_its_events() -> None:
    shares = (
        BridgeShare(events=300, cpu_s=0.3, rebalances=2, repeated=4),
        BridgeShare(events=100, cpu_s=0.2, rebalances=1, repeated=0),
    )
    measured = Round(instances=2, per_s=200.0, seconds=2.0, cpu_window_s=2.5, bridges=shares)

    assert shares[0].cpu_us_per_event == pytest.approx(1000.0)
    assert shares[1].cpu_us_per_event == pytest.approx(2000.0)
    assert measured.cpu_us_per_event == pytest.approx(1250.0)
    summary = measured.summary()
    assert summary["cpu_us_per_event"] == 1250.0
    assert summary["bridges"] == [
        {
            "events": 300,
            "cpu_us_per_event": 1000.0,
            "cpu_s_per_s": 0.12,
            "rebalances": 2,
            "repeated_starts": 4,
        },
        {
            "events": 100,
            "cpu_us_per_event": 2000.0,
            "cpu_s_per_s": 0.08,
            "rebalances": 1,
            "repeated_starts": 0,
        },
    ]


def test_a_bridge_that_handled_nothing_has_no_cpu_per_event() -> None:
    assert math.isnan(BridgeShare(events=0, cpu_s=0.1, rebalances=1, repeated=0).cpu_us_per_event)


def test_direct_run_cpu_per_start() -> None:
    assert DirectRun(starts=400, cpu_s=0.5, seconds=2.0).cpu_us_per_start == pytest.approx(1250.0)


def test_a_bridge_round_is_compared_with_the_raw_rate_of_its_moment() -> None:
    # Raw rounds at slots 0 and 3 of a round; the server slowed from 120 to 90 a second.
    assert interpolated(120.0, 90.0, 0, 3) == 120.0
    assert interpolated(120.0, 90.0, 1, 3) == 110.0
    assert interpolated(120.0, 90.0, 2, 3) == 100.0
    assert interpolated(120.0, 90.0, 3, 3) == 90.0


def test_the_rounds_note_names_each_side_with_its_ratio_between_the_raw_rounds() -> None:
    sides = [([77.0, 65.0], [0.81, 0.91]), ([83.0, 64.0], [0.89, 0.88])]
    note = rounds_note(["default", "fixed"], [98.0, 69.0], sides, [91.0, 75.0])
    assert note == (
        "rounds in order, raw / default / fixed / raw; ratios against the raw rate interpolated "
        "to each bridge round: 98 /s / 77 /s (0.81) / 83 /s (0.89) / 91 /s, "
        "69 /s / 65 /s (0.91) / 64 /s (0.88) / 75 /s"
    )
