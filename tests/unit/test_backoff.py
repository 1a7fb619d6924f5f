"""The one retry schedule: doubling, capped, jittered within half to all, with a deadline."""

from __future__ import annotations

import time

from bridge.backoff import Backoff


def test_delays_double_up_to_the_maximum() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jittered_delays_stay_between_half_and_all() -> None:
    backoff = Backoff(1.0, 4.0, jitter=True)
    for expected in (1.0, 2.0, 4.0, 4.0):
        assert expected / 2 <= backoff.next() <= expected


def test_the_deadline_counts_the_next_delay() -> None:
    assert not Backoff(0.1, 1.0, deadline_s=60).exhausted
    assert Backoff(5.0, 10.0, deadline_s=1).exhausted
    assert not Backoff(5.0, 10.0).exhausted  # no deadline: never exhausted
    backoff = Backoff(0.01, 0.01, deadline_s=0.05)
    time.sleep(0.05)
    assert backoff.exhausted
