"""Benchmark helpers of pure logic: pacing of direct calls, the exactly-once check of a
round's workflows, the per-event CPU figures of the scale scenario, the raw rate a
bridge round is compared with, what a run records when a scenario fails, which
scenarios get a fresh server, the cores processes use while a scenario's work runs, and the
profile's CPU per event by thread and its stage of a sampled stack."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from temporalio.service import RPCError, RPCStatusCode

from bench import run as bench_run
from bench import scale as bench_scale
from bench import throughput as bench_throughput
from bench.bridge_process import Child, ChildError, sample_total, spawn
from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    answered_rate,
    check_starts,
    cores_used,
    cpu_load,
    mean_cores,
    paced,
    span_rate,
)
from bench.direct import DirectRun
from bench.latency import DirectRound, direct_summary, latencies, load_added
from bench.profile import WAITING, cpu_line, stage_of, thread_cpu
from bench.scale import BridgeShare, Round
from bench.throughput import (
    bracketed,
    bracketed_rounds,
    mean_round,
    rounds_note,
    start_with_retries,
)
from bridge.dev.processes import Service, stop_group
from tests.support.waiting import eventually


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
    measured = Round(
        instances=2,
        per_s=200.0,
        seconds=2.0,
        cpu_window_s=2.5,
        bridges=shares,
        cores={"Temporal": 1.3, "Kafka": 0.04},
    )

    assert shares[0].cpu_us_per_event == pytest.approx(1000.0)
    assert shares[1].cpu_us_per_event == pytest.approx(2000.0)
    assert measured.cpu_us_per_event == pytest.approx(1250.0)
    summary = measured.summary()
    assert summary["cpu_us_per_event"] == 1250.0
    # The two processes together: 0.5 s of CPU over the 2.5 s window.
    assert measured.bridge_cores == pytest.approx(0.2)
    assert summary["bridge_cores"] == 0.2
    assert summary["cores"] == {"Temporal": 1.3, "Kafka": 0.04}
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


def closed_loop(count: int, concurrency: int, rate: float) -> tuple[list[float], list[float]]:
    """``count`` calls from ``concurrency`` callers, each sending its next as its last is
    answered, to a server that persists one start per ``1 / rate`` seconds in arrival order
    and stamps each start time as its request arrives: (start times, answer times)."""
    starts: list[float] = []
    answers: list[float] = []
    for n in range(count):
        sent = 0.0 if n < concurrency else answers[n - concurrency]  # a caller freed
        starts.append(sent)
        answers.append(max(sent, answers[-1] if answers else 0.0) + 1 / rate)
    return starts, answers


def test_a_round_rate_runs_to_the_last_answer_so_calls_sent_at_once_gain_nothing() -> None:
    # 3,000 starts at 250/s: the start times of 256 calls at once span 1.09 times fewer
    # seconds than the work took; from the first start to the last answer, it is 250.
    for concurrency in (1, 16, 256):
        starts, answers = closed_loop(3000, concurrency, 250.0)
        assert answered_rate(starts, max(answers)) == pytest.approx(250.0, rel=1e-3)
    starts, _ = closed_loop(3000, 256, 250.0)
    assert span_rate(starts) == pytest.approx(250.0 * 3000 / (3000 - 256), rel=1e-2)
    assert math.isnan(answered_rate([], 1.0))
    assert math.isnan(answered_rate([5.0], 5.0))


def test_a_bridge_round_is_compared_with_the_raw_rounds_just_before_and_after_it() -> None:
    # raw 200, 1 bridge 190, raw 180, 2 bridges 150, raw 120: each against its neighbours.
    ratios = bracketed([200.0, 180.0, 120.0], [190.0, 150.0])
    assert ratios == [pytest.approx(1.0), pytest.approx(1.0)]
    assert bracketed([100.0, 100.0], [95.0]) == [pytest.approx(0.95)]
    with pytest.raises(ValueError, match="2 bridge rounds need 3 raw rounds"):
        bracketed([200.0, 180.0], [190.0, 150.0])


def test_the_headline_is_the_mean_rate_of_the_rounds_beside_the_mean_of_their_references() -> None:
    # raw 300, bridge 270, raw 280, bridge 200, raw 100: the rounds read 270 / 290 and
    # 200 / 190; the headline takes both alike, rates and references, so they divide to it.
    rounds = bracketed_rounds([300.0, 280.0, 100.0], [270.0, 200.0])
    assert [(r.rate, r.reference) for r in rounds] == [(270.0, 290.0), (200.0, 190.0)]
    mean = mean_round(rounds)
    assert (mean.rate, mean.reference) == (235.0, 240.0)
    assert mean.ratio == pytest.approx(235.0 / 240.0)
    assert min(r.ratio for r in rounds) < mean.ratio < max(r.ratio for r in rounds)
    assert mean_round(rounds[:1]) == rounds[0]
    with pytest.raises(ValueError, match="no bridge rounds"):
        mean_round([])


def offline_context(
    tmp_path: Path, client: object = None, *, quick: bool = True, rounds: int | None = None
) -> BenchContext:
    """A run's context with no stack: no settings or catalog, ``client`` as its Temporal
    client (a fake, or none), ``rounds`` as ``--rounds``."""
    return BenchContext(
        settings=None,  # type: ignore[arg-type]
        catalog=None,  # type: ignore[arg-type]
        client=client,  # type: ignore[arg-type]
        quick=quick,
        work_dir=tmp_path,
        machine={},
        rounds_wanted=rounds,
    )


def fake_scale_rounds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Raw rounds at 100, 101, ... /s and bridge rounds at 100 + their place in the run,
    instead of real ones; returns what ran, in order."""
    raw_rates = iter(float(100 + n) for n in range(40))
    played: list[str] = []

    async def raw_round(
        ctx: BenchContext, count: int, concurrency: int
    ) -> tuple[float, float, dict[str, float]]:
        rate = next(raw_rates)
        played.append(f"raw {rate:.0f}")
        return rate, rate, {"Temporal": rate / 100}

    async def bridges_round(ctx: BenchContext, count: int, instances: int) -> Round:
        played.append(f"{instances} bridges")
        share = BridgeShare(events=count, cpu_s=1.0, rebalances=1, repeated=0)
        return Round(
            instances, 100.0 + len(played), 10.0, 10.0, (share,) * instances, {"Temporal": 1.5}
        )

    monkeypatch.setattr(bench_scale, "raw_round", raw_round)
    monkeypatch.setattr(bench_scale, "bridges_round", bridges_round)
    return played


def kinds_played(played: list[str]) -> list[str]:
    return [p.split(" ")[0] if p.startswith("raw") else p for p in played]


def assert_scale_headline(metrics: dict[str, Any]) -> None:
    """Each kind's headline is the mean rate of its rounds beside the mean of their own
    references, the two dividing to its ratio; each kind's lists hold its own rounds in
    the order they ran, and its summary their means."""
    for kind, name, per_s, ratio_key, reference, rounds_key, ratios_key in (
        (
            1,
            "one",
            "one_per_s",
            "one_ratio",
            "one_raw_per_s",
            "one_rounds_per_s",
            "one_round_ratios",
        ),
        (2, "two", "two_per_s", "ratio", "raw_per_s", "two_rounds_per_s", "two_round_ratios"),
    ):
        own = [r for r in metrics["bridge_rounds"] if r["instances"] == kind]
        assert len(own) >= 2  # the mean is over several rounds, not one
        rates = [r["per_s"] for r in own]
        references = [r["per_s"] / r["ratio"] for r in own]
        assert metrics[per_s] == pytest.approx(statistics.fmean(rates), abs=0.1)
        assert metrics[reference] == pytest.approx(statistics.fmean(references), rel=1e-3)
        assert metrics[ratio_key] == pytest.approx(metrics[per_s] / metrics[reference], abs=1e-3)
        assert metrics[rounds_key] == rates
        assert metrics[ratios_key] == [r["ratio"] for r in own]
        summary = metrics[name]
        assert summary["rounds"] == len(own)
        assert summary["per_s"] == metrics[per_s]
        assert summary["cpu_us_per_event"] == pytest.approx(
            statistics.fmean(r["cpu_us_per_event"] for r in own), abs=0.1
        )
        assert summary["bridge_cores"] == pytest.approx(
            statistics.fmean(r["bridge_cores"] for r in own), abs=1e-3
        )


def test_scale_rounds_past_one_servers_share_run_on_a_fresh_server_after_a_raw_round(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    played = fake_scale_rounds(monkeypatch)
    renewals: list[int] = []

    async def renew() -> bool:
        renewals.append(len(played))
        played.append("fresh server")
        return True

    ctx = offline_context(tmp_path, quick=False, rounds=5)
    ctx.results["throughput"] = ScenarioResult("throughput", {"concurrency": 16}, [])
    assert asyncio.run(ctx.renew_server()) is False  # a server the run did not start stays
    monkeypatch.setattr(ctx, "renew_server", renew)

    result = asyncio.run(bench_scale.run(ctx))
    metrics = result.metrics

    # Two rounds per server (SERVER_ROUNDS), each server's first raw round its own; the
    # kinds' order alternates from round to round, and each server opens with the order
    # the one before it did not.
    first = ["raw", "1 bridges", "raw", "2 bridges", "raw", "2 bridges", "raw", "1 bridges", "raw"]
    second = ["raw", "2 bridges", "raw", "1 bridges", "raw", "1 bridges", "raw", "2 bridges", "raw"]
    assert kinds_played(played) == [
        *first,
        "fresh server",
        *second,
        "fresh server",
        *first[:5],
    ]
    assert metrics["fresh_server_before_rounds"] == [3, 5]
    raws = metrics["raw_rounds_per_s"]
    assert raws == [float(100 + n) for n in range(13)]
    # The first bridge round on the second server sits between that server's raw rounds
    # (105, 106), not the first server's last one (104).
    fifth = metrics["bridge_rounds"][4]
    assert fifth["instances"] == 2
    assert fifth["ratio"] == pytest.approx(fifth["per_s"] / ((105.0 + 106.0) / 2), abs=1e-3)
    assert [r["instances"] for r in metrics["bridge_rounds"]] == [1, 2, 2, 1, 2, 1, 1, 2, 1, 2]
    assert_scale_headline(metrics)
    (order_note,) = [n for n in result.notes if n.startswith("rounds in order")]
    assert "a raw round before and after each bridge round, named" in order_note
    assert "100 /s / 1 bridge 102 /s (1.01) / 101 /s / 2 bridges 104 /s" in order_note
    # Each raw round's cores, in the order they ran; each part of the note in that order.
    assert metrics["raw_rounds_cores"] == [{"Temporal": r / 100} for r in raws]
    (cores_note,) = [n for n in result.notes if n.startswith("cores from the first start")]
    assert cores_note.split("together): ", 1)[1].split("; ")[:4] == [
        "raw Temporal 1.00",
        "1 bridge: bridges 0.10, Temporal 1.50",
        "raw Temporal 1.01",
        "2 bridges: bridges 0.20, Temporal 1.50",
    ]
    assert cores_note.split("together): ", 1)[1].split("; ")[4:6] == [
        "raw Temporal 1.02",
        "2 bridges: bridges 0.20, Temporal 1.50",
    ]
    assert cores_note.endswith("raw Temporal 1.12")


@pytest.mark.parametrize(
    ("rounds", "kinds", "lead"),
    [
        (
            2,
            [1, 2, 2, 1],
            "raw / 1 bridge / raw / 2 bridges / raw / 2 bridges / raw / 1 bridge / raw",
        ),
        # A server the run did not start takes every round: the order still alternates.
        (4, [1, 2, 2, 1, 1, 2, 2, 1], "raw / 1 bridge / raw / 2 bridges / raw / 2 bridges / raw"),
    ],
)
def test_scale_rounds_on_one_server_alternate_and_lead_with_their_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rounds: int, kinds: list[int], lead: str
) -> None:
    played = fake_scale_rounds(monkeypatch)
    ctx = offline_context(tmp_path, quick=False, rounds=rounds)
    ctx.results["throughput"] = ScenarioResult("throughput", {"concurrency": 16}, [])

    result = asyncio.run(bench_scale.run(ctx))

    assert [r["instances"] for r in result.metrics["bridge_rounds"]] == kinds
    assert kinds_played(played) == [
        part for kind in kinds for part in ("raw", f"{kind} bridges")
    ] + ["raw"]
    assert result.metrics["fresh_server_before_rounds"] == []
    assert_scale_headline(result.metrics)
    (order_note,) = [n for n in result.notes if n.startswith("rounds in order")]
    assert order_note.startswith(f"rounds in order, {lead}")


def test_a_full_scale_run_takes_four_rounds_of_each_kind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_scale_rounds(monkeypatch)
    ctx = offline_context(tmp_path, quick=False)
    ctx.results["throughput"] = ScenarioResult("throughput", {"concurrency": 16}, [])

    metrics = asyncio.run(bench_scale.run(ctx)).metrics

    assert bench_scale.FULL_ROUNDS == 4
    assert metrics["rounds"] == 4
    assert [r["instances"] for r in metrics["bridge_rounds"]] == [1, 2, 2, 1] * 2
    assert metrics["one"]["rounds"] == metrics["two"]["rounds"] == 4
    assert_scale_headline(metrics)


class FlakyClient:
    """A client whose first ``failures`` start calls of each workflow id fail with
    ``status``, a moment after they are made."""

    def __init__(self, failures: int, status: RPCStatusCode) -> None:
        self.failures, self.status = failures, status
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def start_workflow(self, workflow: str, **arguments: Any) -> None:
        self.calls.append((workflow, arguments))
        await asyncio.sleep(0.001)
        if sum(1 for _, a in self.calls if a["id"] == arguments["id"]) <= self.failures:
            raise RPCError("Timeout expired", self.status, b"")


def test_a_direct_start_is_tried_again_on_an_error_the_bridge_retries_and_not_forever(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_throughput, "RETRY_PAUSE_S", 0.0)
    request = {"workflow": "OrderWorkflow", "id": "bench-1", "task_queue": "q"}

    client = FlakyClient(2, RPCStatusCode.CANCELLED)  # how a timed-out call comes back
    ctx = offline_context(tmp_path, client)
    asyncio.run(start_with_retries(ctx, request))
    assert ctx.retried_calls == 2
    assert client.calls == [("OrderWorkflow", {"id": "bench-1", "task_queue": "q"})] * 3
    assert request["workflow"] == "OrderWorkflow"  # the request is left as it was

    steady = offline_context(tmp_path, FlakyClient(0, RPCStatusCode.CANCELLED))
    asyncio.run(start_with_retries(steady, request))
    assert steady.retried_calls == 0

    stalled = FlakyClient(10, RPCStatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(RPCError):
        asyncio.run(start_with_retries(offline_context(tmp_path, stalled), request))
    assert len(stalled.calls) == bench_throughput.RAW_TRIES

    refused = FlakyClient(1, RPCStatusCode.INVALID_ARGUMENT)  # not transient: no second try
    with pytest.raises(RPCError):
        asyncio.run(start_with_retries(offline_context(tmp_path, refused), request))
    assert len(refused.calls) == 1


def test_direct_starts_side_by_side_count_every_try_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Sixteen callers at once, as a raw round runs them: a count read before a try's await
    # and written after it would keep one caller's tries and lose the rest.
    monkeypatch.setattr(bench_throughput, "RETRY_PAUSE_S", 0.0)
    ctx = offline_context(tmp_path, FlakyClient(1, RPCStatusCode.UNAVAILABLE))
    requests = [{"workflow": "OrderWorkflow", "id": f"bench-{n}"} for n in range(16)]

    async def all_at_once() -> None:
        await asyncio.gather(*(start_with_retries(ctx, r) for r in requests))

    asyncio.run(all_at_once())
    assert ctx.retried_calls == 16


def test_a_scenario_that_retried_direct_calls_says_how_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def flaky(ctx: BenchContext) -> ScenarioResult:
        ctx.retried_calls += 3
        return ScenarioResult("flaky", {"per_s": 5.0}, [])

    async def steady(ctx: BenchContext) -> ScenarioResult:
        return ScenarioResult("steady", {"per_s": 5.0}, [])

    runners: dict[str, Any] = {"flaky": flaky, "steady": steady}
    monkeypatch.setattr(bench_run, "SCENARIOS", {"flaky": False, "steady": False})
    monkeypatch.setattr(bench_run, "_module_runner", runners.get)
    out = tmp_path / "latest.json"

    assert asyncio.run(bench_run.run(["flaky", "steady"], True, out, "make bench")) == 0

    written = json.loads(out.read_text())
    assert written["flaky"]["raw_calls_retried"] == 3
    assert any("3 direct start call(s) tried again" in n for n in written["flaky"]["notes"])
    assert "raw_calls_retried" not in written["steady"]  # each scenario counts its own
    assert written["steady"]["notes"] == []


def test_the_rounds_note_names_each_side_with_its_ratio_between_the_raw_rounds() -> None:
    rounds = [([98.0, 80.0, 91.0], [77.0, 83.0]), ([69.0, 64.0, 75.0], [65.0, 64.0])]
    note = rounds_note([["default", "fixed"]] * 2, rounds)
    assert note == (
        "rounds in order, raw / default / raw / fixed / raw; ratios against the mean of the "
        "raw rounds just before and after each bridge round: "
        "98 /s / 77 /s (0.87) / 80 /s / 83 /s (0.97) / 91 /s, "
        "69 /s / 65 /s (0.98) / 64 /s / 64 /s (0.92) / 75 /s"
    )


def test_the_rounds_note_names_each_bridge_round_where_servers_ran_different_orders() -> None:
    rounds = [([98.0, 80.0, 91.0], [77.0, 83.0]), ([69.0, 64.0, 75.0], [65.0, 64.0])]
    note = rounds_note([["1 bridge", "2 bridges"], ["2 bridges", "1 bridge"]], rounds)
    assert note == (
        "rounds in order, a raw round before and after each bridge round, named; ratios "
        "against the mean of the raw rounds just before and after each bridge round: "
        "98 /s / 1 bridge 77 /s (0.87) / 80 /s / 2 bridges 83 /s (0.97) / 91 /s, "
        "69 /s / 2 bridges 65 /s (0.98) / 64 /s / 1 bridge 64 /s (0.92) / 75 /s"
    )
    with pytest.raises(ValueError, match="1 orders of names for 2 servers"):
        rounds_note([["1 bridge", "2 bridges"]], rounds)


def test_each_kind_of_scale_round_takes_each_place_as_often_over_two_servers() -> None:
    first = bench_scale.round_order(0, 0) + bench_scale.round_order(0, 1)
    second = bench_scale.round_order(1, 0) + bench_scale.round_order(1, 1)
    assert first == (1, 2, 2, 1)
    assert second == (2, 1, 1, 2)
    # On one server, the mean place of each kind is the same.
    assert sum(p for p, k in enumerate(first) if k == 1) == sum(
        p for p, k in enumerate(first) if k == 2
    )


def test_a_failed_scenario_is_recorded_and_the_next_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ctx: BenchContext) -> ScenarioResult:
        raise RuntimeError("transport error")

    async def fine(ctx: BenchContext) -> ScenarioResult:
        return ScenarioResult("fine", {"per_s": 5.0}, [Row("rate", "5 /s", "4 /s", met=True)])

    runners: dict[str, Any] = {"broken": broken, "fine": fine}
    monkeypatch.setattr(bench_run, "SCENARIOS", {"broken": False, "fine": False})
    monkeypatch.setattr(bench_run, "_module_runner", runners.get)
    out = tmp_path / "latest.json"
    out.write_text(json.dumps({"broken": {"per_s": 9.0}}))

    status = asyncio.run(bench_run.run(["broken", "fine"], True, out, "make bench"))

    written = json.loads(out.read_text())
    assert status == 1
    assert written["fine"]["per_s"] == 5.0
    failure = written["broken"]
    assert failure["status"] == "failed"
    assert failure["reason"] == "failed: RuntimeError: transport error"
    assert "per_s" not in failure  # the figures of an earlier run are not passed off as this one's
    kept = Path(failure["kept"])
    assert kept.is_dir()  # the logs stay for a look at what failed
    shutil.rmtree(kept)


def test_a_run_without_failures_removes_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    async def fine(ctx: BenchContext) -> ScenarioResult:
        seen.append(ctx.work_dir)
        return ScenarioResult("fine", {"per_s": 5.0}, [])

    monkeypatch.setattr(bench_run, "SCENARIOS", {"fine": False})
    monkeypatch.setattr(bench_run, "_module_runner", {"fine": fine}.get)

    assert asyncio.run(bench_run.run(["fine"], True, tmp_path / "latest.json", "make bench")) == 0
    assert len(seen) == 1
    assert not seen[0].exists()


def test_rounds_asked_for_reach_every_scenario_that_runs_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []

    async def rounds(ctx: BenchContext) -> ScenarioResult:
        seen.append((ctx.rounds(1, 2), ctx.rounds(1, 4)))
        return ScenarioResult("rounds", {}, [])

    monkeypatch.setattr(bench_run, "SCENARIOS", {"rounds": False})
    monkeypatch.setattr(bench_run, "_module_runner", {"rounds": rounds}.get)
    out = tmp_path / "latest.json"

    assert asyncio.run(bench_run.run(["rounds"], False, out, "make bench ROUNDS=6", 6)) == 0
    assert asyncio.run(bench_run.run(["rounds"], False, out, "make bench")) == 0
    assert asyncio.run(bench_run.run(["rounds"], True, out, "make bench QUICK=1")) == 0
    assert seen == [(6, 6), (2, 4), (1, 1)]


def test_the_command_names_the_rounds_and_a_count_below_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_run(*args: Any) -> None:
        calls.append(args)

    monkeypatch.setattr(bench_run, "run", fake_run)
    monkeypatch.setattr(bench_run, "run_loop", lambda _: 0)
    with pytest.raises(SystemExit) as done:
        bench_run.main(["--scenario", "scale", "--rounds", "6"])
    assert done.value.code == 0
    assert calls[0][3] == "make bench SCENARIO=scale ROUNDS=6"
    assert calls[0][4] == 6
    for bad, message in (("0", "0 rounds: at least 1"), ("x", "'x' is not a whole number")):
        with pytest.raises(SystemExit) as refused:
            bench_run.main(["--rounds", bad])
        assert refused.value.code == 2
        assert message in capsys.readouterr().err
    assert len(calls) == 1


def test_the_stack_report_names_a_service_that_exited_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "temporal.log"
    gone = Service(
        "temporal", [sys.executable, "-c", "print('panic: out of memory'); exit(2)"], log
    )
    gone.start()
    assert gone.proc is not None
    gone.proc.wait(30)
    running = Service(
        "kafka", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "k.log"
    )
    running.start()
    try:
        assert bench_run.exited([gone, running]) == ["temporal"]
        report = bench_run.stack_report([gone, running])
    finally:
        running.stop()
    assert "temporal (exited with 2)" in report
    assert "panic: out of memory" in report
    assert "kafka (running)" in report


def test_each_scenario_after_the_first_gets_a_fresh_server_but_latency_follows_throughput() -> None:
    assert not bench_run.fresh_server("throughput", None)  # the run's server is new
    assert not bench_run.fresh_server("latency", "throughput")
    assert bench_run.fresh_server("scale", "latency")
    assert bench_run.fresh_server("signals", "saga")
    # Without throughput just before it, latency measures on a server of its own too.
    assert bench_run.fresh_server("latency", "saga")
    assert not bench_run.fresh_server("latency", None)


async def test_cores_used_counts_each_process_and_leaves_out_one_that_ended() -> None:
    ended = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")

    async def work() -> str:
        spent = time.process_time()
        while time.process_time() - spent < 0.05:  # 50 ms of this process's CPU
            pass
        await ended.wait()  # reaped: its pid no longer exists
        return "done"

    result, cores = await cores_used({"bench": os.getpid(), "gone": ended.pid}, work())
    assert result == "done"
    assert set(cores) == {"bench"}
    assert cores["bench"] > 0


def test_a_sample_total_sums_the_samples_whose_labels_include_those_asked() -> None:
    scrape = {
        "ktb_temporal_call_seconds_sum": [({"action": "start"}, 2.0), ({"action": "signal"}, 0.25)]
    }
    assert sample_total(scrape, "ktb_temporal_call_seconds_sum") == 2.25
    assert sample_total(scrape, "ktb_temporal_call_seconds_sum", action="start") == 2.0
    assert sample_total(scrape, "ktb_temporal_call_seconds_count", action="start") == 0


def test_the_load_a_bridge_round_added_leaves_temporal_out() -> None:
    direct = {"Temporal": 1.0, "Kafka": 0.02, "bench (caller)": 0.12}
    bridge = {"Temporal": 0.9, "Kafka": 0.22, "bridge": 0.21, "bench (producer)": 0.07}
    assert load_added(direct, bridge) == pytest.approx(0.36)


def test_mean_cores_counts_a_process_absent_from_a_part_as_idle_there() -> None:
    parts = [{"Temporal": 1.0, "bridge": 0.2}, {"Temporal": 0.8}]
    assert mean_cores(parts) == {"Temporal": pytest.approx(0.9), "bridge": pytest.approx(0.1)}


def test_mean_cores_weighs_each_part_by_its_length() -> None:
    # A quarter, a half and a quarter of a round's time, as the latency scenario's parts.
    parts = [{"Temporal": 1.0}, {"Temporal": 0.6, "plain starter": 0.2}, {"Temporal": 1.0}]
    assert mean_cores(parts, [1, 2, 1]) == {
        "Temporal": pytest.approx(0.8),
        "plain starter": pytest.approx(0.1),
    }
    with pytest.raises(ValueError, match="3 parts but 2 weights"):
        mean_cores(parts, [1, 2])


def test_latencies_run_from_each_send_to_its_recorded_start_and_miss_none() -> None:
    sends = [100.0, 100.5]
    times = {"bench-u1-u1p0-000000": 100.004, "bench-u1-u1p0-000001": 100.5025, "other": 1.0}
    assert latencies(times, "u1", "u1p0", sends) == [pytest.approx(4.0), pytest.approx(2.5)]
    with pytest.raises(RuntimeError, match="only 1 of 2 events started a workflow"):
        latencies({"bench-u1-u1p0-000000": 100.004}, "u1", "u1p0", sends)


def test_direct_rounds_before_and_after_a_bridge_round_are_taken_together() -> None:
    # The server slowed between the rounds: the pooled figures lie between the two.
    before = DirectRound(
        [1.0] * 98 + [10.0, 10.0], [5.0] * 100, {"Temporal": 0.8, "bench (caller)": 0.1}, 100
    )
    after = DirectRound(
        [3.0] * 98 + [30.0, 30.0], [7.0] * 100, {"Temporal": 1.0, "bench (caller)": 0.3}, 100
    )
    pooled = direct_summary(90.0, [before, after])
    assert pooled["events"] == 200
    assert pooled["p50_ms"] == 3.0  # the 100th of 200 by nearest rank: the later round's
    assert pooled["p99_ms"] == 10.0  # the 198th: two of the four slowest were before
    assert pooled["max_ms"] == 30.0
    assert pooled["call_mean_ms"] == pytest.approx(6.0)
    assert pooled["cores"] == {"Temporal": pytest.approx(0.9), "bench (caller)": pytest.approx(0.2)}
    assert [r["p50_ms"] for r in pooled["rounds"]] == [1.0, 3.0]
    assert [r["call_mean_ms"] for r in pooled["rounds"]] == [5.0, 7.0]
    # One round alone: its own figures, no breakdown.
    alone = direct_summary(90.0, [before])
    assert (alone["p50_ms"], alone["p99_ms"], alone["events"]) == (1.0, 10.0, 100)
    assert "rounds" not in alone


def test_direct_rounds_of_different_lengths_weigh_their_cores_by_their_calls() -> None:
    # The first round's settling calls (not counted) ran at the rate too: its cores were
    # read over them as well, so its length is every call it made.
    quarter = DirectRound([2.0] * 100, [5.0] * 100, {"Temporal": 0.7}, 200)
    half = DirectRound([2.0] * 200, [5.0] * 200, {"Temporal": 1.0}, 200)
    assert direct_summary(90.0, [quarter, half])["cores"] == {"Temporal": pytest.approx(0.85)}
    shorter = DirectRound([2.0] * 100, [5.0] * 100, {"Temporal": 0.7}, 100)
    assert direct_summary(90.0, [shorter, half])["cores"] == {"Temporal": pytest.approx(0.9)}


async def test_a_child_that_exited_says_so_with_its_exit_code_and_log(tmp_path: Path) -> None:
    class Probe(Child):
        name = "probe"

    child = Probe(tmp_path / "probe.log")
    with pytest.raises(ChildError, match="the probe is not started"):
        child.check()
    child.proc = await spawn(["bench.no_such_module"], os.environ, child.log)
    await asyncio.wait_for(child.proc.wait(), 30)
    with pytest.raises(ChildError, match=r"the probe exited \(1\)") as raised:
        child.check()
    assert "No module named bench.no_such_module" in str(raised.value)
    assert not await stop_group(child.proc, 1)  # gone already: nothing to kill


async def test_stop_group_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "stubborn.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = await spawn(["stubborn"], env, log)

    async def ready() -> bool:
        return "ready" in log.read_text()

    await eventually(ready, interval=0.05)  # its SIGTERM handler is in place
    assert await stop_group(proc, 0.5)
    assert proc.returncode == -9  # SIGKILL


async def test_a_cpu_load_runs_its_spinners_only_inside_the_block() -> None:
    async with cpu_load(0.0) as none:
        assert none == {}
    async with cpu_load(2.0) as spinners:
        assert list(spinners) == ["load 1", "load 2", "load 3"]  # none above 0.9 of a core
        processes = [psutil.Process(pid) for pid in spinners.values()]
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
    assert not any(psutil.pid_exists(pid) for pid in spinners.values())


def test_profile_splits_cpu_per_event_by_thread_and_kernel_share() -> None:
    before = {"main user": 1.0, "main system": 0.5, "other user": 2.0, "other system": 0.0}
    after = {"main user": 1.6, "main system": 0.7, "other user": 2.3, "other system": 0.1}
    line = cpu_line(before, after, 1000)
    assert line == (
        "bridge CPU per event: main thread 800 us (200 us of it in the kernel), "
        "other threads 400 us (100 us of it in the kernel)"
    )


def test_profile_reads_the_cpu_of_this_process_threads() -> None:
    spent = thread_cpu(os.getpid())
    assert set(spent) == {"main user", "main system", "other user", "other system"}
    assert spent["main user"] > 0


# The start of every stack of the bridge's main thread, as py-spy samples it.
LOOP = (
    "_run_module_as_main (<frozen runpy>:198);<module> (bridge/__main__.py:5);"
    "bridge (bridge/cli/main.py:103);run_loop (bridge/cli/common.py:73);"
    "Runner.run (asyncio/runners.py:118)"
)


def test_profile_counts_uvloop_in_c_as_waiting_and_python_frames_as_their_stage() -> None:
    # Without native frames uvloop's wait in epoll is the run call alone.
    assert stage_of(LOOP) == WAITING
    # With them (--native) the wait shows as such; the loop's own C work does not.
    native = LOOP + ";run_forever (loop.c:33397);uv_run (core.c:464)"
    assert stage_of(native + ";uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6)") == WAITING
    assert stage_of(native + ";uv__read (stream.c:1143)") == "event loop"
    # A Python thread waiting on a lock, natively sampled: the libc frame is an address.
    lock = (
        "Thread.run (threading.py:982);SdkMetrics._drain_loop (bridge/observability/"
        "telemetry.py:132);Event.wait (threading.py:629);lock_PyThread_acquire_lock;"
        "PyThread_acquire_lock_timed;0x7f182caae116;0x7f182caa3f16"
    )
    assert stage_of(lock) == WAITING
    routing = LOOP + ";Engine._drain_key (bridge/engine.py:361);Route.match (bridge/routes.py:88)"
    assert stage_of(routing) == "route: conditions, templates, action"
    assert stage_of("Thread.run (threading.py:982);worker (rust.py:3)") == "other Python threads"
    # A thread of the SDK's Rust core: no frame, or native ones only (--native).
    assert stage_of("") == "native threads (no Python frames)"
    assert stage_of("start_thread (libc.so.6);tokio_worker_run (worker.rs:500)") == (
        "native threads (no Python frames)"
    )
