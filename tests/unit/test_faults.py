"""The error taxonomy's mapping onto Temporal failures, and the circuit breaker."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bridge.sdk.faults import (
    AuthorizationError,
    CircuitBreaker,
    CircuitOpenError,
    DatabaseError,
    ExternalServiceError,
    Fault,
    NetworkError,
    ValidationError,
    application_error,
    retry_policy,
)

DOCUMENTED = [
    (DatabaseError, 3, timedelta(seconds=1)),
    (NetworkError, 5, timedelta(seconds=2)),
    (ExternalServiceError, 3, timedelta(seconds=5)),
]


@pytest.mark.parametrize(("cls", "retries", "initial"), DOCUMENTED)
def test_documented_schedules(cls: type[Fault], retries: int, initial: timedelta) -> None:
    assert cls.retry is not None
    assert cls.retry.retries == retries
    assert cls.retry.initial == initial
    assert cls.retry.delay(1) == initial
    assert cls.retry.delay(3) == initial * 4


@pytest.mark.parametrize(("cls", "retries", "initial"), DOCUMENTED)
def test_retryable_until_retries_are_used_up(
    cls: type[Fault], retries: int, initial: timedelta
) -> None:
    for attempt in range(1, retries + 1):
        err = application_error(cls("boom"), attempt)
        assert err.type == cls.__name__
        assert not err.non_retryable
        assert err.next_retry_delay == initial * 2 ** (attempt - 1)
    last = application_error(cls("boom"), retries + 1)
    assert last.non_retryable
    assert last.next_retry_delay is None


@pytest.mark.parametrize("cls", [ValidationError, AuthorizationError])
def test_never_retried(cls: type[Fault]) -> None:
    err = application_error(cls("no", field="total_cents"), 1)
    assert err.non_retryable
    assert err.type == cls.__name__
    assert err.details == ({"field": "total_cents"},)


def test_subclass_keeps_its_own_name_and_the_parents_schedule() -> None:
    class CardDeclined(AuthorizationError):
        pass

    class Locked(DatabaseError):
        pass

    assert application_error(CardDeclined("declined"), 1).non_retryable
    locked = application_error(Locked("locked"), 1)
    assert locked.type == "Locked"
    assert not locked.non_retryable


def test_scale_shrinks_intervals_not_counts() -> None:
    err = application_error(NetworkError("reset"), 2, scale=0.01)
    assert err.next_retry_delay == timedelta(milliseconds=40)
    assert application_error(NetworkError("reset"), 6, scale=0.01).non_retryable
    policy = retry_policy(scale=0.01)
    assert policy.initial_interval == timedelta(milliseconds=10)
    assert policy.maximum_attempts == 6
    assert set(policy.non_retryable_error_types or []) == {"ValidationError", "AuthorizationError"}


def test_retry_after_is_a_lower_bound() -> None:
    fault = ExternalServiceError("open")
    fault.retry_after = timedelta(seconds=20)
    assert application_error(fault, 1).next_retry_delay == timedelta(seconds=20)
    fault.retry_after = timedelta(seconds=1)
    assert application_error(fault, 1).next_retry_delay == timedelta(seconds=5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _fail(breaker: CircuitBreaker, exc: Exception) -> None:
    with pytest.raises(type(exc)):
        async with breaker.guard():
            raise exc


async def _succeed(breaker: CircuitBreaker) -> None:
    async with breaker.guard():
        pass


async def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker("gateway", 3, timedelta(seconds=30), clock=clock)
    for _ in range(2):
        await _fail(breaker, ExternalServiceError("503"))
    assert breaker.state == CircuitBreaker.CLOSED
    await _fail(breaker, NetworkError("reset"))
    assert breaker.state == CircuitBreaker.OPEN
    clock.now += 10
    with pytest.raises(CircuitOpenError) as info:
        await _succeed(breaker)
    assert info.value.retry_after == timedelta(seconds=20)
    assert info.value.fields == {"dependency": "gateway"}
    assert not application_error(info.value, 1).non_retryable


async def test_breaker_half_open_trial_closes_or_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker("gateway", 2, timedelta(seconds=5), clock=clock)
    await _fail(breaker, ExternalServiceError("503"))
    await _fail(breaker, ExternalServiceError("503"))
    clock.now += 5
    assert breaker.state == CircuitBreaker.HALF_OPEN
    await _fail(breaker, ExternalServiceError("still 503"))
    assert breaker.state == CircuitBreaker.OPEN
    clock.now += 5
    await _succeed(breaker)
    assert breaker.state == CircuitBreaker.CLOSED
    assert breaker.failures == 0


async def test_breaker_allows_one_trial_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker("gateway", 1, timedelta(seconds=5), clock=clock)
    await _fail(breaker, ExternalServiceError("503"))
    clock.now += 6
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


async def test_breaker_ignores_errors_that_are_not_the_dependencys() -> None:
    clock = Clock()
    breaker = CircuitBreaker("gateway", 1, timedelta(seconds=5), clock=clock)
    await _fail(breaker, ValidationError("declined"))
    await _fail(breaker, DatabaseError("locked"))
    assert breaker.state == CircuitBreaker.CLOSED
