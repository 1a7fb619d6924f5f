"""The test helpers themselves: a wait that reports why it gave up."""

from __future__ import annotations

import itertools

import pytest

from tests.support import waiting
from tests.support.waiting import eventually, until


class SteppingClock:
    """Stands in for ``time`` in ``tests.support.waiting``: every reading is ``step`` later."""

    def __init__(self, step: float) -> None:
        self._readings = itertools.count(0.0, step)

    def monotonic(self) -> float:
        return next(self._readings)


async def test_the_last_assertion_is_raised_when_the_deadline_passes_between_readings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The deadline passes after the check failed with an AssertionError while still in
    # time, before the wait looks at the clock again: the check's own failure is what the
    # test must see, not an UnboundLocalError from a result never returned.
    monkeypatch.setattr(waiting, "time", SteppingClock(step=0.6))

    async def check() -> bool:
        raise AssertionError("the order was not acted on")

    with pytest.raises(AssertionError, match="the order was not acted on"):
        await eventually(check, timeout=1.0, interval=0)


async def test_an_assertion_after_a_falsy_result_is_not_hidden_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting, "time", SteppingClock(step=0.4))
    answers = iter([0])

    async def check() -> int:
        value = next(answers, None)
        if value is None:
            raise AssertionError("the workflow is gone")
        return value

    with pytest.raises(AssertionError, match="the workflow is gone"):
        await eventually(check, timeout=1.0, interval=0)


async def test_a_falsy_result_at_the_deadline_is_named() -> None:
    async def check() -> list[int]:
        return []

    with pytest.raises(AssertionError, match=r"not met within 0.05s \(last: \[\]\)"):
        await eventually(check, timeout=0.05, interval=0.01)


async def test_the_first_truthy_result_is_returned() -> None:
    answers = iter([None, AssertionError("not yet"), 0, "done"])

    async def check() -> str | int | None:
        answer = next(answers)
        if isinstance(answer, AssertionError):
            raise answer
        return answer

    assert await eventually(check, timeout=5, interval=0) == "done"


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        raise KeyError("a bug in the check")

    with pytest.raises(KeyError):
        await eventually(check, timeout=5, interval=0)
    assert calls == 1


async def test_until_waits_on_a_plain_condition() -> None:
    seen: list[int] = []

    def grown() -> bool:
        seen.append(len(seen))
        return len(seen) >= 3

    await until(grown, timeout=5, interval=0)
    assert len(seen) == 3
    with pytest.raises(AssertionError, match="condition not met"):
        await until(lambda: False, timeout=0.02, interval=0.005)
