"""The error taxonomy of activities, mapped onto Temporal retries.

=======================  =======  ==============  ===================================
class                    retries  first interval  notes
=======================  =======  ==============  ===================================
``DatabaseError``        3        1 s             exponential (x2)
``NetworkError``         5        2 s             exponential (x2)
``ExternalServiceError`` 3        5 s             exponential (x2), circuit breaker
``ValidationError``      never                    non-retryable
``AuthorizationError``   never                    non-retryable
=======================  =======  ==============  ===================================

"Retries" are attempts after the first: an activity that keeps raising
``DatabaseError`` runs four times in all. Activities raise these classes (or
subclasses); ``FaultInterceptor`` on the worker turns each into a Temporal
``ApplicationError`` whose ``type`` is the class name, with ``next_retry_delay``
from the class's backoff and ``non_retryable`` once its retries are used up, so
one activity can fail in different ways and each way keeps its own schedule.
``retry_policy()`` is the matching workflow-side policy. ``scale`` shrinks every
interval (tests run the real schedule in milliseconds); the defaults are the
documented ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from bridge.errors import BridgeError


@dataclass(frozen=True)
class Retry:
    """How often and how patiently one fault class is retried."""

    retries: int
    initial: timedelta
    backoff: float = 2.0

    def delay(self, attempt: int, scale: float = 1.0) -> timedelta:
        """The wait after failed attempt ``attempt`` (1-based) before the next one."""
        return self.initial * (self.backoff ** (attempt - 1)) * scale


class Fault(BridgeError):
    """Root of the activity error taxonomy; ``retry`` ``None`` means never retried."""

    error_type = "fault"
    retry: ClassVar[Retry | None] = None

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields
        """Structured context carried as the ``ApplicationError`` details."""
        self.retry_after: timedelta | None = None
        """A lower bound on the wait before the next attempt (an open circuit sets it)."""


class DatabaseError(Fault):
    """A database call failed (locked, unavailable, connection lost)."""

    error_type = "database_error"
    transient = True
    retry = Retry(3, timedelta(seconds=1))


class NetworkError(Fault):
    """A network call failed (refused, reset, timed out)."""

    error_type = "network_error"
    transient = True
    retry = Retry(5, timedelta(seconds=2))


class ExternalServiceError(Fault):
    """A third-party service answered with an error or not at all."""

    error_type = "external_service_error"
    transient = True
    retry = Retry(3, timedelta(seconds=5))


class CircuitOpenError(ExternalServiceError):
    """The circuit breaker of a dependency is open: the call was not attempted."""

    error_type = "circuit_open"


class ValidationError(Fault):
    """The request itself is wrong; retrying cannot help."""

    error_type = "validation_error"


class AuthorizationError(Fault):
    """The caller (or the card, the account ...) is not allowed; retrying cannot help."""

    error_type = "authorization_error"


NEVER_RETRIED = (ValidationError.__name__, AuthorizationError.__name__)
MOST_RETRIES = max(
    c.retry.retries for c in (DatabaseError, NetworkError, ExternalServiceError) if c.retry
)


def application_error(fault: Fault, attempt: int, scale: float = 1.0) -> ApplicationError:
    """The Temporal failure for ``fault`` raised by attempt ``attempt`` (1-based)."""
    rule = type(fault).retry
    exhausted = rule is None or attempt > rule.retries
    delay: timedelta | None = None
    if rule is not None and not exhausted:
        delay = rule.delay(attempt, scale)
        if fault.retry_after is not None:
            delay = max(delay, fault.retry_after)
    details = (fault.fields,) if fault.fields else ()
    return ApplicationError(
        fault.message,
        *details,
        type=type(fault).__name__,
        non_retryable=exhausted,
        next_retry_delay=delay,
    )


def retry_policy(scale: float = 1.0, maximum_attempts: int = MOST_RETRIES + 1) -> RetryPolicy:
    """The workflow-side policy for activities whose faults the interceptor classifies.

    Per-class delays and limits come from the faults themselves; this policy
    bounds everything else (unclassified errors get the most patient schedule).
    """
    return RetryPolicy(
        initial_interval=timedelta(seconds=1) * scale,
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60) * scale,
        maximum_attempts=maximum_attempts,
        non_retryable_error_types=list(NEVER_RETRIED),
    )


class FaultInterceptor(Interceptor):
    """Worker interceptor mapping taxonomy faults raised by activities onto Temporal retries.

    Retried attempts are counted by ``bridge.metrics.WorkerMetrics`` (every worker has it).
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap every activity of the worker."""
        return _FaultActivity(next, self)


class _FaultActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owner: FaultInterceptor) -> None:
        super().__init__(next)
        self.owner = owner

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        try:
            return await self.next.execute_activity(input)
        except Fault as fault:
            raise application_error(fault, info.attempt, self.owner.scale) from fault


class CircuitBreaker:
    """Fails calls to one dependency fast after repeated failures.

    Closed: calls go through; ``failure_threshold`` consecutive failures open it.
    Open: calls raise ``CircuitOpenError`` (retryable, ``retry_after`` = the rest of
    the cool-down) without touching the dependency. After ``reset_timeout`` one
    trial call goes through (half-open): success closes the circuit, failure
    opens it again. State is per process, like the connections it protects.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: timedelta = timedelta(seconds=30),
        counts: tuple[type[Fault], ...] = (ExternalServiceError, NetworkError),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout.total_seconds()
        self.counts = counts
        self.clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` right now."""
        if self._opened_at is None:
            return self.CLOSED
        if self.clock() - self._opened_at < self.reset_timeout:
            return self.OPEN
        return self.HALF_OPEN

    def before_call(self) -> None:
        """Raise ``CircuitOpenError`` unless a call may go through now."""
        state = self.state
        if state == self.CLOSED:
            return
        if state == self.HALF_OPEN and not self._trial:
            self._trial = True
            return
        assert self._opened_at is not None
        remaining = max(0.0, self._opened_at + self.reset_timeout - self.clock())
        error = CircuitOpenError(
            f"circuit of {self.name} is open after {self.failures} failures",
            dependency=self.name,
        )
        error.retry_after = timedelta(seconds=remaining)
        raise error

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        self.failures = 0
        self._opened_at = None
        self._trial = False

    def record_failure(self) -> None:
        """A call failed: count it; open (or re-open) the circuit at the threshold."""
        self.failures += 1
        if self._trial or self.failures >= self.failure_threshold:
            self._opened_at = self.clock()
        self._trial = False

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """``async with breaker.guard(): await call()`` — counts the call's outcome."""
        self.before_call()
        try:
            yield
        except self.counts:
            self.record_failure()
            raise
        except BaseException:
            # Not the dependency's fault (a declined card, a cancellation): the
            # trial slot is freed but the failure count is left alone.
            self._trial = False
            raise
        self.record_success()
