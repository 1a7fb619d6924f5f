"""Prometheus metrics in one container with an injected registry (never the global one)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
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

DURATION_BUCKETS = (1, 5, 10, 30, 60, 300, 600)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 10_000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric a ktb process exports; labels declared once, here."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "ktb_events_consumed", "Records read from Kafka by the bridge", ["topic"], registry=r
        )
        self.events_routed = Counter(
            "ktb_events_routed",
            "Events by route, action and result",
            ["route", "action", "result"],
            registry=r,
        )
        self.event_to_action = Histogram(
            "ktb_event_to_action_seconds",
            "From the record's timestamp to Temporal accepting the action",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "ktb_consumer_lag",
            "Records between the committed offset and the end of the partition",
            ["topic", "partition"],
            registry=r,
        )
        self.in_flight = Gauge("ktb_in_flight", "Records fetched and not yet done", registry=r)
        self.rebalances = Counter(
            "ktb_rebalances",
            "Partition assignments this bridge received from its consumer group (one a rebalance)",
            registry=r,
        )
        self.dead_letters = Counter(
            "ktb_dead_letters",
            "Records sent to a dead-letter topic",
            ["topic", "error_type"],
            registry=r,
        )
        self.parked_records = Gauge(
            "ktb_parked_records",
            "Records of the partitions this bridge holds waiting in <topic>.parked",
            ["topic"],
            registry=r,
        )
        self.parked = Counter(
            "ktb_parked", "Records parked behind a dead letter of their key", ["topic"], registry=r
        )
        self.released = Counter(
            "ktb_released",
            "Parked records acted on after their blocking letter was redriven or discarded",
            ["topic"],
            registry=r,
        )
        self.partitions_paused = Gauge(
            "ktb_partitions_paused",
            "Partitions stopped at a failing record until an operator resumes them",
            ["topic"],
            registry=r,
        )
        self.transient_retries = Counter(
            "ktb_transient_retries",
            "Retries of actions after a transient Temporal or Kafka failure",
            ["topic"],
            registry=r,
        )
        self.rate_limited = Counter(
            "ktb_rate_limited_seconds",
            "Time records of a rate-limited route waited for a token (per bridge instance)",
            ["route"],
            registry=r,
        )
        self.events_published = Counter(
            "ktb_events_published",
            "Events published by workflow activities",
            ["topic", "kind"],
            registry=r,
        )
        self.compensations = Counter(
            "ktb_compensations",
            "Saga compensation steps run",
            ["workflow_type", "step"],
            registry=r,
        )
        self.workflow_executions = Counter(
            "workflow_executions",
            "Workflow executions finished, by type and status",
            ["workflow_type", "status"],
            registry=r,
        )
        self.workflow_duration = Histogram(
            "workflow_duration_seconds",
            "Workflow execution duration",
            ["workflow_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.activity_retries = Counter(
            "activity_retries", "Activity attempts after the first", ["activity_type"], registry=r
        )
        self.api_requests = Counter(
            "ktb_api_requests",
            "HTTP API requests by route template and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "ktb_api_request_duration_seconds",
            "HTTP API request handling time (streams: until the stream ends)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.api_events_produced = Counter(
            "ktb_api_events_produced", "Events produced by POST /events", ["topic"], registry=r
        )
        self.debounce_windows = Counter(
            "ktb_debounce_windows",
            "Debounce windows closed (one run started each), by route",
            ["route"],
            registry=r,
        )
        self.batch_size = Histogram(
            "ktb_batch_size",
            "Events per closed batch window, by route",
            ["route"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.indexer_records = Counter(
            "ktb_indexer_records",
            "Provenance records the indexer wrote (written) or passed over (skipped)",
            ["result"],
            registry=r,
        )
        self.indexer_paused = Gauge(
            "ktb_indexer_paused",
            "1 while the indexer waits for the database to come back",
            registry=r,
        )


WORKFLOW_FINISHED = "ktb_workflow_finished"
"""The extern function workflow interceptors call (outside the sandbox) to count a run."""
WINDOW_CLOSED = "ktb_window_closed"
"""The extern function the window collector calls to count a closed window."""


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
