"""Workflow and activity metrics of a worker: a Temporal worker interceptor counting into
``Metrics``. Its own module so processes without a worker (the API) never import the
SDK's worker machinery."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import is_cancelled_exception
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)
from temporalio.workflow import ContinueAsNewError

from bridge.observability.metrics import WINDOW_CLOSED, WORKFLOW_FINISHED, Metrics


class WorkerMetrics(Interceptor):
    """Worker interceptor for the workflow and activity metrics of the founding notes.

    ``workflow_executions_total{workflow_type,status}`` and ``workflow_duration_seconds``
    count runs that end on this worker: ``completed``, ``failed``, ``cancelled`` or
    ``continued_as_new`` (termination and timeouts happen on the server and are not
    seen here). Replays of finished histories (queries after a cache eviction) are
    not counted. ``activity_retries_total`` counts every attempt after the first.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Count retried attempts of every activity of the worker."""
        return _ActivityMetrics(next, self.metrics)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        """Workflow runs report their end through an extern function (no I/O in the sandbox)."""
        input.unsafe_extern_functions[WORKFLOW_FINISHED] = self.workflow_finished
        input.unsafe_extern_functions[WINDOW_CLOSED] = self.window_closed
        return _WorkflowMetrics

    def workflow_finished(self, workflow_type: str, status: str, seconds: float) -> None:
        """Count one finished run."""
        self.metrics.workflow_executions.labels(workflow_type, status).inc()
        self.metrics.workflow_duration.labels(workflow_type).observe(max(0.0, seconds))

    def window_closed(self, kind: str, route: str, size: int) -> None:
        """Count one window a collector closed (``debounce`` or ``batch``) and its size."""
        if kind == "debounce":
            self.metrics.debounce_windows.labels(route).inc()
        else:
            self.metrics.batch_size.labels(route).observe(size)


class _ActivityMetrics(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, metrics: Metrics) -> None:
        super().__init__(next)
        self.metrics = metrics

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.attempt > 1:
            self.metrics.activity_retries.labels(info.activity_type).inc()
        return await self.next.execute_activity(input)


class _WorkflowMetrics(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            result = await self.next.execute_workflow(input)
        except ContinueAsNewError:
            _finished("continued_as_new")
            raise
        except (Exception, asyncio.CancelledError) as err:
            # Mirrors how the SDK ends a run; other exceptions fail only the task (retried).
            if workflow.cancellation_reason() is not None and (
                isinstance(err, asyncio.CancelledError) or is_cancelled_exception(err)
            ):
                _finished("cancelled")
            elif workflow.is_failure_exception(err):
                _finished("failed")
            raise
        _finished("completed")
        return result


def _finished(status: str) -> None:
    if workflow.unsafe.is_replaying_history_events():
        return
    info = workflow.info()
    seconds = (workflow.now() - info.workflow_start_time).total_seconds()
    workflow.extern_functions()[WORKFLOW_FINISHED](info.workflow_type, status, seconds)
