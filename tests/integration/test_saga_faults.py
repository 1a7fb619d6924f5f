"""The taxonomy on the real dev server: each class is retried exactly as often as stated."""

from __future__ import annotations

import asyncio
from collections import Counter

from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from bridge.sdk import faults
from bridge.sdk.faults import FaultInterceptor
from tests.integration.saga_workflows import FAIL_ACTIVITY, FaultProbe, Publisher
from tests.support import running_worker

SCALE = 0.01
EXPECTED_ATTEMPTS = {
    "DatabaseError": 4,
    "NetworkError": 6,
    "ExternalServiceError": 4,
    "ValidationError": 1,
    "AuthorizationError": 1,
}


async def test_each_fault_class_is_retried_as_stated(client, uid):
    attempts: Counter[str] = Counter()

    @activity.defn(name=FAIL_ACTIVITY)
    async def fail_with(fault: str) -> None:
        attempts[fault] += 1
        raise getattr(faults, fault)(f"{fault} on attempt {activity.info().attempt}")

    task_queue = f"faults-{uid}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[FaultProbe],
        activities=[fail_with],
        interceptors=[FaultInterceptor(scale=SCALE)],
    ):
        results = await asyncio.gather(
            *(
                client.execute_workflow(
                    FaultProbe.run,
                    args=[fault, SCALE],
                    id=f"faults-{uid}-{fault}",
                    task_queue=task_queue,
                )
                for fault in EXPECTED_ATTEMPTS
            )
        )
    for fault, result in zip(EXPECTED_ATTEMPTS, results, strict=True):
        assert result == {"type": fault, "non_retryable": True}, fault
    assert dict(attempts) == EXPECTED_ATTEMPTS


async def test_publishing_data_that_misfits_fails_at_once_naming_the_field(
    settings, catalog, client, topics, uid
):
    task_queue = f"publish-{uid}"
    async with running_worker(settings, catalog, client, task_queue, [Publisher]):
        handle = await client.start_workflow(
            Publisher.run,
            args=[topics["outcomes"], "com.example.order.failed", {"order_id": "o-1"}],
            id=f"publish-{uid}",
            task_queue=task_queue,
        )
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            failure = exc.cause
        else:
            raise AssertionError("publishing misfit data succeeded")
    assert isinstance(failure, ActivityError)
    cause = failure.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    assert cause.type == "SchemaMismatchError"
    assert "'step'" in cause.message
    assert cause.details == ({"field": "step"},)
    started = [
        e
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert [e.activity_task_started_event_attributes.attempt for e in started] == [1]
