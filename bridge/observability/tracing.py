"""OpenTelemetry tracing: one trace from the incoming event to the outcome events.

A W3C ``traceparent`` on the Kafka record is the parent of the bridge's span
(``Ingress.handle``); the Temporal SDK's ``TracingInterceptor`` on the client
carries the context into the workflow and its activities; the publishing
activity writes its own span's context as the outgoing ``traceparent``. Without
an exporter (``KTB_OTLP_ENDPOINT`` unset) no tracer exists, the bridge opens no
span and the publisher falls back to the triggering event's ``traceparent``
kept in the workflow memo, so tracing costs nothing when it is off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.dispatch import Outcome, Result
from bridge.envelope import RecordLike
from bridge.settings import Settings

if TYPE_CHECKING:
    from temporalio.contrib.opentelemetry import TracingInterceptor

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACER_NAME = "ktb"
EXPORT_TIMEOUT_S = 10.0

_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_HEADERS = frozenset({TRACEPARENT, TRACESTATE})


@dataclass
class Tracing:
    """The tracer provider of one process and the Temporal interceptor that uses it."""

    provider: TracerProvider
    tracer: Tracer
    interceptor: TracingInterceptor

    def shutdown(self) -> None:
        """Flush pending spans and stop the exporters."""
        self.provider.shutdown()


def setup_tracing(
    settings: Settings, service: str, exporter: SpanExporter | None = None
) -> Tracing | None:
    """Tracing for ``service`` when an OTLP endpoint or ``exporter`` is given, else ``None``.

    ``exporter`` (tests: an in-memory one) gets every span as it ends; the OTLP
    exporter batches. The provider is this process's own, never the global one.
    """
    if exporter is None and not settings.otlp_endpoint:
        return None
    provider = TracerProvider(
        resource=Resource({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT_S)
            )
        )
    # Imported here: it loads the SDK's worker machinery, which a process that does
    # not trace (or runs no worker) should not pay for at start-up.
    from temporalio.contrib.opentelemetry import TracingInterceptor

    tracer = provider.get_tracer(TRACER_NAME)
    return Tracing(provider, tracer, TracingInterceptor(tracer))


def context_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """The W3C trace-context headers of a Kafka record, as text."""
    return {
        name: value.decode("latin-1")
        for name, value in headers or ()
        if name in _CONTEXT_HEADERS and value is not None
    }


@contextlib.contextmanager
def consume_span(tracer: Tracer, record: RecordLike) -> Iterator[trace.Span]:
    """The bridge's span for one record, a child of the record's ``traceparent`` if any.

    It is the current span while the record is acted on, so the Temporal client
    call made meanwhile carries it into the workflow.
    """
    carrier = context_headers(record.headers)
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
    }
    for name, value in record.headers or ():
        if name == "ce_id" and value is not None:
            attributes["messaging.message.id"] = value.decode("utf-8", "replace")
    with tracer.start_as_current_span(
        f"process {record.topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def record_result(span: trace.Span, result: Result) -> None:
    """Note on the bridge's span what happened to the record."""
    span.set_attribute("ktb.result", result.outcome.value)
    if result.route:
        span.set_attribute("ktb.route", result.route)
    if result.workflow_id:
        span.set_attribute("temporalWorkflowID", result.workflow_id)
    if result.run_id:
        span.set_attribute("temporalRunID", result.run_id)
    if result.outcome is Outcome.DEAD_LETTERED:
        span.set_status(Status(StatusCode.ERROR, result.detail or result.outcome.value))


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, or ``None`` when no span is recording."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def outgoing_traceparent(triggering: str | None) -> str | None:
    """The ``traceparent`` of an event published now: the current span's, else ``triggering``.

    The current span continues the trace only when it belongs to the triggering
    event's trace (or that event had none): a worker that traces while the bridge
    does not starts fresh traces, and then the triggering event's trace is kept.
    """
    current = current_traceparent()
    if current is None:
        return triggering
    trace_id = trace_id_of(triggering)
    if trace_id is not None and trace_id_of(current) != trace_id:
        return triggering
    return current


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a ``traceparent`` value, if it is well formed."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    return parts[1].lower()
