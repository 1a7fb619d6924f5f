"""A small chaos run as part of the suite: every fault kind once or twice."""

from __future__ import annotations

import pytest

from tests.chaos.harness import ChaosConfig, run_chaos


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_nothing_lost_or_duplicated_under_faults(tmp_path) -> None:
    config = ChaosConfig(
        events=150, seed=7, rate=8, bridge_kills=2, worker_kills=1, temporal_restarts=1,
        kafka_restarts=1, rebalances=2, outage_s=8, data_dir=tmp_path / "chaos",
        quiesce_timeout_s=240,
    )  # fmt: skip
    report = await run_chaos(config)
    print(report.table())
    assert report.faults["bridge_kill"] == 2 and report.faults["kafka_restart"] == 1
    assert report.ok, report.table()
    assert report.dlq == report.poison
    assert report.outage_dead_letters == 0
    assert report.kill_in_commit_window
