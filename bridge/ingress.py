"""One record through the bridge: decode → route → dispatch, or dead-letter.

Live consumption, replay and the HTTP API all go through one ``Ingress`` and its
``Decoder``; they differ only in where records come from and whether offsets are
committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from opentelemetry.trace import Tracer

from bridge.codec import SchemaCatalog
from bridge.decoding import Decoder
from bridge.dispatch import DryRun, Executor, Outcome, Result
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.envelope import Event, RecordLike
from bridge.errors import PauseRequested, PermanentError, UnmatchedEventError
from bridge.observability import tracing
from bridge.observability.metrics import Metrics
from bridge.pacing import RateLimits
from bridge.provenance import ProvenanceWriter
from bridge.routes import Action, FailurePolicy, Router

log = logging.getLogger("ktb.ingress")


NOT_ACTED = (Outcome.DUPLICATE, Outcome.DRY_RUN)
"""Outcomes that changed nothing in Temporal: no event-to-action latency to observe."""


@dataclass(frozen=True, slots=True)
class DeadLettered(Result):
    """The result of a record sent to its DLQ: where the letter went and the failure
    policy of the record (``park_key`` blocks its key)."""

    letter: str | None = None
    """``<dlq topic>:<partition>:<offset>`` of the letter (None when nothing was written)."""
    policy: FailurePolicy = FailurePolicy.DEAD_LETTER


class Ingress:
    """Decode, route and act on records; permanent failures go to the DLQ."""

    def __init__(
        self,
        catalog: SchemaCatalog,
        router: Router,
        dispatcher: Executor | None,
        dead_letters: DeadLetterPublisher | None,
        metrics: Metrics | None = None,
        provenance: ProvenanceWriter | None = None,
        tracer: Tracer | None = None,
        decoder: Decoder | None = None,
        rate_limits: bool = True,
    ) -> None:
        self.catalog = catalog
        self.router = router
        self.decoder = decoder or Decoder(catalog, router.config.envelope)
        """Records to events in every wire format; without one, no Schema Registry."""
        self.dispatcher: Executor = dispatcher if dispatcher is not None else DryRun()
        """Carries out routed actions; without one (dry runs), ``DryRun`` describes them."""
        self.dead_letters = dead_letters
        self.metrics = metrics or Metrics()
        self.provenance = provenance
        self.tracer = tracer
        """Set when tracing is on: each record gets a span, the parent of the Temporal calls."""
        self.rate_limits = RateLimits(self.metrics) if rate_limits else None
        """The routes' token buckets (the live bridge's); ``None`` for replays, which are
        held to their own rate, and for an ingress that acts on nothing."""

    def route(self, event: Event) -> Action | None:
        """The action for ``event``; ``None`` to skip it. Raises ``PermanentError``."""
        action = self.router.route(event)
        if action is None and self.router.dead_letter_unmatched:
            raise UnmatchedEventError(
                f"no route for type {event.type!r} on topic {event.topic!r}", event_id=event.id
            )
        return action

    def plan(self, record: RecordLike) -> tuple[Event, Action | None]:
        """Decode and route without acting, from cached schemas only; raises
        ``PermanentError``, and ``SchemaNotLoaded`` (transient) for a registry schema
        not fetched yet (``predict`` fetches it)."""
        event = self.decoder.decode_now(record)
        return event, self.route(event)

    async def predict(self, record: RecordLike) -> tuple[Event, Action | None]:
        """Decode and route without acting, fetching registry schemas on first sight;
        raises ``PermanentError``, or ``TransientError`` while the registry is away."""
        event = await self.decoder.decode(record)
        return event, self.route(event)

    async def handle(self, record: RecordLike, closed: asyncio.Event | None = None) -> Result:
        """Act on one record. ``TransientError`` propagates: the caller retries.

        A rate-limited route's action waits for a token first, and every action for a
        slot in Temporal (``bridge.concurrency``); ``Abandoned`` if ``closed`` (the
        record's partition closing) is set meanwhile.
        """
        if self.tracer is None:
            return await self._handle(record, closed)
        with tracing.consume_span(self.tracer, record) as span:
            result = await self._handle(record, closed)
            tracing.record_result(span, result)
            return result

    async def _handle(self, record: RecordLike, closed: asyncio.Event | None) -> Result:
        event: Event | None = None
        action: Action | None = None
        try:
            event = await self.decoder.decode(record)
            action = self.route(event)
            if action is None:
                result = Result(Outcome.SKIPPED, detail="no route matched")
            else:
                if action.rate_limit is not None and self.rate_limits is not None:
                    await self.rate_limits.acquire(action.route, action.rate_limit, closed)
                result = await self.dispatcher.execute(action, event, closed)
                if record.timestamp and result.outcome not in NOT_ACTED:
                    self.metrics.event_to_action.observe(
                        max(0.0, time.time() - record.timestamp / 1000)
                    )
        except PermanentError as exc:
            policy = self.router.failure_policy(record.topic, action.route if action else None)
            if policy is FailurePolicy.PAUSE:
                raise PauseRequested(exc) from exc  # the engine holds the partition at it
            result = await self.dead_letter(record, exc, policy)
        else:
            self.metrics.events_routed.labels(
                result.route or "", result.action or "", result.outcome.value
            ).inc()
            # Routine outcomes are counted (ktb_events_routed_total) and kept in provenance;
            # their line is DEBUG so that it costs nothing per event unless asked for.
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "event %s", result.outcome.value,
                    extra={"event_id": event.id, "workflow_id": result.workflow_id,
                           "run_id": result.run_id, "route": result.route,
                           "tenant_id": event.tenant_id, "topic": record.topic,
                           "partition": record.partition, "offset": record.offset},
                )  # fmt: skip
        if self.provenance is not None:
            self.provenance.event(record, event, result)
        return result

    async def dead_letter(
        self,
        record: RecordLike,
        exc: PermanentError,
        policy: FailurePolicy = FailurePolicy.DEAD_LETTER,
    ) -> DeadLettered:
        """Publish ``record`` to its DLQ with ``exc`` as the reason."""
        if self.dead_letters is None:
            return DeadLettered(
                Outcome.DEAD_LETTERED, detail=f"{exc.error_type}: {exc.message}", policy=policy
            )
        letter = await self.dead_letters.publish(record, exc)
        self.metrics.dead_letters.labels(record.topic, letter.error_type).inc()
        self.metrics.events_routed.labels("", "", Outcome.DEAD_LETTERED.value).inc()
        log.warning(
            "dead-lettered: %s", exc.message,
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                   "event_id": exc.event_id, "error_type": exc.error_type},
        )  # fmt: skip
        return DeadLettered(
            Outcome.DEAD_LETTERED,
            detail=f"{exc.error_type}: {exc.message} -> {letter.topic}@{letter.offset}",
            letter=letter.name,
            policy=policy,
        )
