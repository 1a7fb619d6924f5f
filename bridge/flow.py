"""Route options that shape how events become runs: ``debounce`` and ``batch``.

The options are validated with the route (``RouteSpec``); a compiled route turns
them into the ``WindowPolicy`` its actions carry, and the dispatcher sends such an
action's event into its window (``window_event``): the collector workflow of
``bridge.sdk.window``, which follows the pure rules here (``Window``: dedupe by
event id, when a window closes, what it takes, in which order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from bridge.dedupe import EventDedupe
from bridge.scheduling import parse_duration as parse_text_duration

if TYPE_CHECKING:
    from bridge.envelope import Event
    from bridge.routes import Action

WINDOW_WORKFLOW = "ktb.Window"
"""The collector's workflow type, registered by ``open_worker`` on every task queue."""
WINDOW_SIGNAL = "ktb_window_event"
"""The signal carrying one ``WindowEvent`` into a collector."""
WINDOW_ID_PREFIX = "ktb.window/"
"""Before the target's id in a collector's id; ``/`` cannot occur in a tenant id."""
BUSY_RETRY = timedelta(seconds=1)
"""How often a collector tries again to start a target whose id another run holds."""
DEDUPE_FOR_S = 3600.0
"""How long an idle collector recognises redelivered event ids, unless the route says."""


# --- windows: the pure rules the collector workflow follows ----------------------------


class WindowKind(StrEnum):
    """How a window closes."""

    DEBOUNCE = "debounce"
    """``period`` after its last event, or ``max_wait`` after its first."""
    BATCH = "batch"
    """At ``max_events`` events, or ``max_wait`` after its first."""


@dataclass(frozen=True)
class WindowPolicy:
    """When a route's windows close, in seconds (from the route's ``debounce`` or ``batch``)."""

    kind: WindowKind
    max_wait_s: float
    period_s: float = 0.0
    max_events: int = 0
    dedupe_for_s: float = DEDUPE_FOR_S

    def closes_at(self, first_s: float, last_s: float) -> float:
        """When a window whose events arrived from ``first_s`` to ``last_s`` closes by time."""
        by_wait = first_s + self.max_wait_s
        if self.kind is WindowKind.DEBOUNCE:
            return min(last_s + self.period_s, by_wait)
        return by_wait

    def full(self, count: int) -> bool:
        """Whether ``count`` events close a window at once."""
        return self.kind is WindowKind.BATCH and count >= self.max_events

    def size(self, count: int) -> int:
        """How many of ``count`` pending events a closing window takes."""
        return min(count, self.max_events) if self.kind is WindowKind.BATCH else count


@dataclass(frozen=True)
class WindowTarget:
    """The workflow a window starts."""

    workflow: str
    task_queue: str
    workflow_id: str
    route: str


@dataclass(frozen=True)
class WindowEvent:
    """One event sent into a window: the collector's signal argument."""

    message: dict[str, Any]
    """What the target receives for it: ``{event_id, event_type, tenant_id, payload}``."""
    target: WindowTarget
    policy: WindowPolicy
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    memo: dict[str, Any] = field(default_factory=dict)
    """The target run's memo when this event opens its window (``ktb``: the event's origin)."""
    search_attributes: dict[str, str] = field(default_factory=dict)
    """The target run's keyword search attributes when this event opens its window."""

    @property
    def event_id(self) -> str:
        """The event's id."""
        return str(self.message.get("event_id", ""))


@dataclass(frozen=True)
class PendingEvent:
    """An event in the open window and when (workflow time, epoch seconds) it arrived."""

    event: WindowEvent
    arrived_s: float


@dataclass(frozen=True)
class WindowState:
    """A collector's input: what the run before it carried over (nothing for a new one)."""

    pending: list[PendingEvent] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    dedupe_for_s: float = DEDUPE_FOR_S
    """How long the collector stays open idle (the policy of the latest event)."""


class Window:
    """The open window of one collector: pending events, seen ids, when it closes."""

    def __init__(self, state: WindowState | None = None) -> None:
        state = state or WindowState()
        self.pending: list[PendingEvent] = list(state.pending)
        self.dedupe = EventDedupe(state.seen)
        self.dedupe_for_s = state.dedupe_for_s

    def add(self, event: WindowEvent, now_s: float) -> bool:
        """Take ``event`` in unless its id was seen; ``False`` for a repeat."""
        if not self.dedupe.first_time(event.message):
            return False
        self.pending.append(PendingEvent(event, now_s))
        self.dedupe_for_s = event.policy.dedupe_for_s
        return True

    @property
    def policy(self) -> WindowPolicy | None:
        """The policy of the latest event (a route edited since applies from then on)."""
        return self.pending[-1].event.policy if self.pending else None

    def closes_at(self) -> float | None:
        """When the open window closes by time; ``None`` with nothing pending."""
        policy = self.policy
        if policy is None:
            return None
        taken = self.pending[: policy.size(len(self.pending))]
        return policy.closes_at(taken[0].arrived_s, taken[-1].arrived_s)

    def full(self) -> bool:
        """Whether the pending events close the window now, whatever the time."""
        policy = self.policy
        return policy is not None and policy.full(len(self.pending))

    def due(self, now_s: float) -> bool:
        """Whether the window closes at ``now_s``."""
        closes = self.closes_at()
        return closes is not None and (self.full() or now_s >= closes)

    def take(self) -> list[WindowEvent]:
        """Close the window: its events leave ``pending``, in offset order per partition."""
        policy = self.policy
        if policy is None:
            return []
        count = policy.size(len(self.pending))
        taken, self.pending = self.pending[:count], self.pending[count:]
        return in_offset_order([p.event for p in taken])

    def state(self) -> WindowState:
        """What the next run carries over."""
        return WindowState(list(self.pending), self.dedupe.state(), self.dedupe_for_s)


def in_offset_order(events: Sequence[WindowEvent]) -> list[WindowEvent]:
    """``events`` with each partition's events in offset order, in the places its events had.

    Events of one key arrive in offset order already; events of different keys of
    one partition are dispatched side by side and may arrive swapped. Events of
    different partitions keep their arrival order (they have no order between them).
    """
    slots: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        if event.partition is not None and event.offset is not None:
            slots[(event.topic or "", event.partition)].append(index)
    ordered = list(events)
    for indices in slots.values():
        by_offset = sorted((events[i] for i in indices), key=lambda e: e.offset or 0)
        for index, event in zip(indices, by_offset, strict=True):
            ordered[index] = event
    return ordered


def collector_id(tenant: str | None, workflow_id: str) -> str:
    """The collector's workflow id for the target ``workflow_id`` of an event of ``tenant``.

    Always scoped by the tenant (``acme:ktb.window/acme:digest-c-1``), whatever the
    route's ``tenant_scoped_ids``; untenanted it starts with ``ktb.window/``, which
    no tenant prefix can be. So a collector only ever holds one tenant's events.
    """
    inner = WINDOW_ID_PREFIX + workflow_id
    return f"{tenant}:{inner}" if tenant else inner


# --- route options --------------------------------------------------------------------


def parse_duration(value: Any) -> timedelta:
    """A route option's duration: what ``start_delay`` takes (``"500ms"``, ``"2s"``,
    ``"1h30m"``, ``"PT5M"``; ``bridge.scheduling.parse_duration``), signed so that a
    negative one is refused by its option's rule, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = value.replace(" ", "") if isinstance(value, str) else ""
    negative = text.startswith("-")
    duration = parse_text_duration(text[1:] if negative else text) if text else None
    if duration is None:
        raise ValueError(f"{value!r} is not a duration (a number with a unit: 500ms, 2s, 1h30m)")
    return -duration if negative else duration


def format_duration(value: timedelta) -> str:
    """A duration as routes files write it (``"2s"``, ``"0.5s"``)."""
    return f"{value.total_seconds():g}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def _positive(name: str, value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{name} must be more than zero, not {value.total_seconds():g}s")


class DebounceSpec(BaseModel):
    """``debounce:`` events of one workflow id within ``period`` of each other make one run,
    started ``period`` after the last or ``max_wait`` after the first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: Duration
    max_wait: Duration
    dedupe_for: Duration = Field(
        timedelta(seconds=DEDUPE_FOR_S),
        description="How long after its last window a redelivered event id is still recognised",
    )

    @model_validator(mode="after")
    def _durations(self) -> DebounceSpec:
        _positive("period", self.period)
        _positive("max_wait", self.max_wait)
        _positive("dedupe_for", self.dedupe_for)
        if self.max_wait < self.period:
            raise ValueError(
                f"max_wait ({self.max_wait.total_seconds():g}s) is shorter than period "
                f"({self.period.total_seconds():g}s)"
            )
        return self


class BatchSpec(BaseModel):
    """``batch:`` events of one workflow id make one run per ``max_events``, or per
    ``max_wait`` after the first event of a batch that is not full."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_events: int = Field(gt=0, le=10_000)
    max_wait: Duration
    dedupe_for: Duration = Field(
        timedelta(seconds=DEDUPE_FOR_S),
        description="How long after its last window a redelivered event id is still recognised",
    )

    @model_validator(mode="after")
    def _durations(self) -> BatchSpec:
        _positive("max_wait", self.max_wait)
        _positive("dedupe_for", self.dedupe_for)
        return self


def check_window_options(
    debounce: DebounceSpec | None,
    batch: BatchSpec | None,
    action: str,
    scheduled: Sequence[str] = (),
) -> None:
    """``ValueError`` naming the field when a route's window options do not fit together;
    ``scheduled`` names the route's scheduling options that are set (priority, ...)."""
    if debounce is not None and batch is not None:
        raise ValueError("debounce and batch exclude each other: a route has one or the other")
    field_name = "debounce" if debounce is not None else "batch" if batch is not None else None
    if field_name is None:
        return
    if action != "start":
        raise ValueError(f"{field_name} applies to action start only, not {action}")
    if scheduled:
        raise ValueError(
            f"{field_name} does not take {', '.join(scheduled)}: the window's collector "
            "starts its runs"
        )


def window_policy(debounce: DebounceSpec | None, batch: BatchSpec | None) -> WindowPolicy | None:
    """The policy a route's windows close by; ``None`` for a route without windows."""
    if debounce is not None:
        return WindowPolicy(
            WindowKind.DEBOUNCE,
            max_wait_s=debounce.max_wait.total_seconds(),
            period_s=debounce.period.total_seconds(),
            dedupe_for_s=debounce.dedupe_for.total_seconds(),
        )
    if batch is not None:
        return WindowPolicy(
            WindowKind.BATCH,
            max_wait_s=batch.max_wait.total_seconds(),
            max_events=batch.max_events,
            dedupe_for_s=batch.dedupe_for.total_seconds(),
        )
    return None


def window_event(
    action: Action,
    event: Event,
    policy: WindowPolicy,
    memo: dict[str, Any],
    search_attributes: dict[str, str],
) -> WindowEvent:
    """What the collector receives for ``event``: its message, its target, its position."""
    return WindowEvent(
        message=action.message[0],
        target=WindowTarget(
            workflow=action.workflow_type or "",
            task_queue=action.task_queue or "",
            workflow_id=action.workflow_id,
            route=action.route,
        ),
        policy=policy,
        topic=event.topic,
        partition=event.partition,
        offset=event.offset,
        memo=memo,
        search_attributes=search_attributes,
    )
