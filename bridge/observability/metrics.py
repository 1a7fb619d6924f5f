"""Prometheus metrics in one container with an injected registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.temporal_call = Histogram(
            "ktb_temporal_call_seconds",
            "From an action's call to Temporal to its answer (the wait for a slot left out)",
            ["action"],
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
        self.temporal_in_flight_limit = Gauge(
            "ktb_temporal_in_flight_limit",
            "Actions the bridge lets into Temporal at once (adaptive unless fixed)",
            registry=r,
        )
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
            "Provenance items the indexer wrote (written) or passed over (skipped)",
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
