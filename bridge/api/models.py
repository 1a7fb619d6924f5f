"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge.temporal import visibility


class ProcessStatus(StrEnum):
    """A workflow execution's status, as Temporal reports it."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    TIMED_OUT = "timed_out"


class EventStatus(StrEnum):
    """Where an event stands: not yet read, no process, or its process's status."""

    PENDING = "pending"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"


class Location(BaseModel):
    """A record's place in Kafka."""

    topic: str
    partition: int
    offset: int


class PublishedEvent(BaseModel):
    """An outcome or compensation event a process published."""

    ce_id: str
    type: str
    kind: str = Field(description="outcome | compensation | ...")
    topic: str
    partition: int
    offset: int
    at: str


class Failure(BaseModel):
    """Why a process did not complete."""

    message: str
    type: str | None = None


class Handling(BaseModel):
    """One time the bridge handled the event (redeliveries and replays add more)."""

    read: Location
    via: str = Field(description="live | replay | ...")
    route: str | None
    action: str | None
    outcome: str
    workflow_id: str | None
    run_id: str | None
    detail: str | None
    at: str


class EventRecord(Handling):
    """One provenance record in a listing: which event, and that handling of it."""

    event_id: str
    type: str | None
    tenant_id: str | None
    key: str | None
    status_url: str


class EventPage(BaseModel):
    """One page of the provenance listing, newest first."""

    items: list[EventRecord]
    next_page_token: str | None = Field(description="Pass as `page_token` for the next page")


class ProcessSummary(BaseModel):
    """A workflow execution as visibility lists it."""

    workflow_id: str
    run_id: str
    workflow_type: str
    status: ProcessStatus | None
    task_queue: str
    start_time: datetime | None
    close_time: datetime | None
    tenant_id: str | None
    business_key: str | None
    event_id: str | None = Field(description="The event that started it")
    status_url: str
    stream_url: str


class ProcessView(ProcessSummary):
    """A workflow execution with its progress, result and published events."""

    progress: dict[str, Any] | None = Field(
        description="The `ktb_progress` query's answer while it runs"
    )
    result: Any = Field(None, description="The workflow's result once completed")
    failure: Failure | None = None
    trigger: dict[str, Any] | None = Field(
        description="What the bridge recorded about the starting event (memo `ktb`)"
    )
    published: list[PublishedEvent]
    compensations: list[PublishedEvent] = Field(description="The published compensation events")


class ProcessPage(BaseModel):
    """One page of a process listing."""

    items: list[ProcessSummary]
    next_page_token: str | None = Field(description="Pass as `page_token` for the next page")


class ProcessState(BaseModel):
    """One server-sent `state` event of a process stream."""

    workflow_id: str
    run_id: str
    status: ProcessStatus | None
    progress: dict[str, Any] | None
    result: Any = None
    failure: Failure | None = None
    history_length: int = Field(0, exclude=True, description="When progress was last read")


class EventView(BaseModel):
    """Provenance of one event: where it was read, what the bridge did, the process."""

    event_id: str
    type: str | None
    tenant_id: str | None
    key: str | None
    status: EventStatus
    produced: Location | None = Field(description="Where POST /events put it")
    read: Location | None = Field(description="Where the bridge read it")
    route: str | None
    action: str | None
    outcome: str | None = Field(description="started | duplicate | signalled | ... | skipped")
    detail: str | None = Field(description="Why it was skipped or dead-lettered, and more")
    workflow_id: str | None
    run_id: str | None
    process: ProcessSummary | None
    published: list[PublishedEvent]
    handlings: list[Handling]


class EventAccepted(BaseModel):
    """POST /events answer while the process has not ended."""

    operation_id: str = Field(description="The event id")
    duplicate: bool = Field(description="The id was used before: nothing was produced")
    type: str
    tenant_id: str | None
    produced: Location | None
    workflow_id: str | None = Field(description="The process the routes map the event to")
    status_url: str
    stream_url: str | None


class EventResult(EventAccepted):
    """POST /events?wait= answer once the process ended (or the event got no process)."""

    status: EventStatus
    run_id: str | None
    result: Any = None
    failure: Failure | None = None
    detail: str | None = None


class PausedView(BaseModel):
    """A partition a bridge stopped at a failing record (``on_failure: pause``); the
    reason is in the bridge's log line and ``ktb bridge resume``, not here (``/readyz``
    answers without authentication)."""

    topic: str
    partition: int
    offset: int
    error_type: str
    paused_at: str


class Ready(BaseModel):
    """Readiness and what it was checked against."""

    status: str
    checks: dict[str, str]
    paused: list[PausedView] = Field(
        default_factory=list,
        description="Partitions stopped at a failing record until `ktb bridge resume` "
        "(they do not make the API unready)",
    )


class Alive(BaseModel):
    """Liveness."""

    status: str


class StructuredEvent(BaseModel):
    """A CloudEvent in structured JSON mode (`application/cloudevents+json`).

    Attributes not listed are extensions (lower-case letters and digits) and
    travel as `ce_<name>` headers. `tenantid` must be the API key's tenant.
    """

    model_config = ConfigDict(extra="allow")

    specversion: str = Field("1.0", pattern=r"^1\.0$")
    id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=visibility.PATTERN,
        description="Default: a new UUID. No control characters, quotes or backslashes "
        "(`GET /events/{id}` could not look it up)",
    )
    type: str = Field(min_length=1, max_length=256, description="The event type (Avro full name)")
    source: str | None = Field(None, min_length=1, max_length=1024, description="Default: ktb-api")
    subject: str | None = Field(None, max_length=1024)
    time: datetime | None = None
    datacontenttype: str | None = Field(None, pattern=r"^application/([a-z.+-]*\+)?json")
    data: dict[str, Any] = Field(description="Validated against the type's schema")
    partitionkey: str | None = Field(
        None, min_length=1, max_length=1024, description="The Kafka key (business key)"
    )
    tenantid: str | None = Field(None, min_length=1, max_length=256)
    correlationid: str | None = Field(None, max_length=256)
    causationid: str | None = Field(None, max_length=256)
    traceparent: str | None = Field(None, max_length=512)
    tracestate: str | None = Field(None, max_length=512)
