"""What workflow authors use: the workflow mixin, publishing, sagas, the fault taxonomy.

``workflow`` and ``saga`` are deterministic and safe in workflow code (import them
inside ``workflow.unsafe.imports_passed_through()``); ``faults`` is raised by
activities and mapped onto Temporal retries by ``FaultInterceptor`` on the worker;
``egress`` is the publishing activity a worker registers. ``bridge`` re-exports
all of it: ``from bridge import BridgeWorkflow, Saga, ValidationError``.
"""

from typing import TYPE_CHECKING

from bridge import lazy

if TYPE_CHECKING:
    from bridge.sdk.egress import Published, Publisher, PublishRequest
    from bridge.sdk.faults import (
        AuthorizationError,
        CircuitBreaker,
        CircuitOpenError,
        DatabaseError,
        ExternalServiceError,
        Fault,
        FaultInterceptor,
        NetworkError,
        Retry,
        ValidationError,
        retry_policy,
    )
    from bridge.sdk.saga import Compensation, Saga, SagaEvents, SagaOutcome
    from bridge.sdk.workflow import BridgeWorkflow, EventDedupe, publish, trigger

# Grouped by role, sorted within each group (the groups read better than one sorted list).
__all__ = [  # noqa: RUF022
    # workflows driven by the bridge
    "BridgeWorkflow",
    "EventDedupe",
    "publish",
    "trigger",
    # sagas
    "Compensation",
    "Saga",
    "SagaEvents",
    "SagaOutcome",
    # the fault taxonomy of activities
    "AuthorizationError",
    "CircuitBreaker",
    "CircuitOpenError",
    "DatabaseError",
    "ExternalServiceError",
    "Fault",
    "FaultInterceptor",
    "NetworkError",
    "Retry",
    "ValidationError",
    "retry_policy",
    # the publishing activity
    "PublishRequest",
    "Published",
    "Publisher",
]

__getattr__, __dir__ = lazy.exports(
    __name__,
    globals(),
    {
        "bridge.sdk.egress": ["Published", "Publisher", "PublishRequest"],
        "bridge.sdk.faults": [
            "AuthorizationError",
            "CircuitBreaker",
            "CircuitOpenError",
            "DatabaseError",
            "ExternalServiceError",
            "Fault",
            "FaultInterceptor",
            "NetworkError",
            "Retry",
            "ValidationError",
            "retry_policy",
        ],
        "bridge.sdk.saga": ["Compensation", "Saga", "SagaEvents", "SagaOutcome"],
        "bridge.sdk.workflow": ["BridgeWorkflow", "EventDedupe", "publish", "trigger"],
    },
)
