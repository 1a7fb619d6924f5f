"""ktb: a declarative, idempotent bridge from Kafka domain events to Temporal workflows.

This is the public surface, grouped by role; everything else is an implementation
module. ``services/`` (the example domain) imports only from here.

- the pipeline: a Kafka record (``RecordLike``) becomes an ``Event``, a ``Router``
  match an ``Action``, the ``Dispatcher``'s ``Result`` an ``Outcome``; ``Ingress``
  runs them in order;
- errors: the transient/permanent split every stage follows;
- the workflow SDK (``bridge.sdk``): ``BridgeWorkflow``, ``publish``, ``Saga``, the
  fault taxonomy of activities, the publishing activity;
- running a process: ``run_worker`` / ``open_worker``, telemetry, logging, standard
  streams that write all they are given (``whole_stdio``), the Kafka clients
  (``kafka.consumer(settings, ...)``), all built from ``Settings``, and an HTTP
  server's uvicorn configuration (``server_config``).

Workflow code imports this package inside ``workflow.unsafe.imports_passed_through()``,
so importing it must stay cheap and free of side effects: each name loads its module
on first use (``bridge.lazy``). The composition roots (``bridge.wiring``, which
reach the consumer, the HTTP API and replay) load on first use of ``run_worker``,
``open_worker`` or ``stop_on_signals``, never on ``import bridge``; a process that
reads one part of the package (the HTTP API, a workflow) loads only that part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge import lazy, sdk

if TYPE_CHECKING:
    from bridge import kafka
    from bridge.codec import SchemaCatalog
    from bridge.decoding import Decoder, open_decoder
    from bridge.dispatch import Dispatcher, Outcome, Result
    from bridge.envelope import (
        Event,
        KafkaRecord,
        RecordLike,
        decode_consumed,
        decode_record,
        encode_event,
    )
    from bridge.errors import BridgeError, ConfigError, PermanentError, TransientError
    from bridge.ingress import Ingress
    from bridge.observability.logs import setup as setup_logging
    from bridge.observability.metrics import Metrics
    from bridge.observability.telemetry import Telemetry, open_telemetry
    from bridge.routes import Action, ActionKind, Router, RoutesConfig
    from bridge.sdk import (
        AuthorizationError,
        BridgeWorkflow,
        CircuitBreaker,
        CircuitOpenError,
        Compensation,
        DatabaseError,
        EventDedupe,
        ExternalServiceError,
        Fault,
        FaultInterceptor,
        NetworkError,
        Published,
        Publisher,
        PublishRequest,
        Retry,
        Saga,
        SagaEvents,
        SagaOutcome,
        ValidationError,
        publish,
        retry_policy,
        trigger,
    )
    from bridge.serving import server_config
    from bridge.settings import Settings
    from bridge.stdio import whole_stdio
    from bridge.wiring import open_worker, run_worker, stop_on_signals

# Grouped by role, sorted within each group (the groups read better than one sorted list).
__all__ = [  # noqa: RUF022
    # the pipeline, in data-flow order
    "RecordLike",
    "Event",
    "KafkaRecord",
    "SchemaCatalog",
    "decode_record",
    "decode_consumed",
    "encode_event",
    "Decoder",
    "open_decoder",
    "Action",
    "ActionKind",
    "Router",
    "RoutesConfig",
    "Dispatcher",
    "Outcome",
    "Result",
    "Ingress",
    "Settings",
    # errors
    "BridgeError",
    "ConfigError",
    "PermanentError",
    "TransientError",
    # the workflow SDK: workflows driven by the bridge
    "BridgeWorkflow",
    "EventDedupe",
    "publish",
    "trigger",
    # the workflow SDK: sagas
    "Compensation",
    "Saga",
    "SagaEvents",
    "SagaOutcome",
    # the workflow SDK: the fault taxonomy of activities
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
    # the workflow SDK: the publishing activity
    "PublishRequest",
    "Published",
    "Publisher",
    # running a process
    "open_worker",
    "run_worker",
    "stop_on_signals",
    "Metrics",
    "Telemetry",
    "open_telemetry",
    "setup_logging",
    "server_config",
    "whole_stdio",
    "kafka",
]

__getattr__, __dir__ = lazy.exports(
    __name__,
    globals(),
    {
        "bridge.envelope": [
            "RecordLike",
            "Event",
            "KafkaRecord",
            "decode_record",
            "decode_consumed",
            "encode_event",
        ],
        "bridge.codec": ["SchemaCatalog"],
        "bridge.decoding": ["Decoder", "open_decoder"],
        "bridge.routes": ["Action", "ActionKind", "Router", "RoutesConfig"],
        "bridge.dispatch": ["Dispatcher", "Outcome", "Result"],
        "bridge.ingress": ["Ingress"],
        "bridge.settings": ["Settings"],
        "bridge.errors": ["BridgeError", "ConfigError", "PermanentError", "TransientError"],
        "bridge.sdk": sdk.__all__,
        "bridge.wiring": ["open_worker", "run_worker", "stop_on_signals"],
        "bridge.observability.metrics": ["Metrics"],
        "bridge.observability.telemetry": ["Telemetry", "open_telemetry"],
        "bridge.stdio": ["whole_stdio"],
        "bridge.serving": ["server_config"],
    },
    {"setup_logging": "bridge.observability.logs:setup", "kafka": "bridge.kafka"},
)
