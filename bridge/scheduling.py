"""When and in what order Temporal runs a started workflow: priority, fairness, start delay.

A route's ``priority``, ``fairness_key``, ``fairness_weight`` and ``start_delay`` are
compiled once (``ScheduleTemplates``) and resolved per event into a ``Schedule``, which
the ``Action`` carries to the dispatcher. A value that does not resolve (a priority
that is not a positive integer, a start delay that is neither a duration nor an
RFC 3339 time) is a ``RouteError``: the event is dead-lettered with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bridge.errors import ConfigError, RouteError
from bridge.templates import Template

T = TypeVar("T")

FAIRNESS_KEY_MAX_BYTES = 64
"""Temporal's limit on a fairness key."""
FAIRNESS_WEIGHT_MIN = 0.001
FAIRNESS_WEIGHT_MAX = 1000.0
"""The range Temporal clamps fairness weights into; the routes file must stay inside it."""


@dataclass(frozen=True, slots=True)
class StartDelay:
    """How long Temporal holds a started workflow's first task: a duration, or until a
    time (what is left of it when the start is sent; nothing once it has passed)."""

    after: timedelta | None = None
    at: datetime | None = None

    def from_now(self, now: datetime) -> timedelta:
        """The delay to send with a start made at ``now`` (never negative)."""
        if self.at is not None:
            return max(self.at - now, timedelta(0))
        return self.after or timedelta(0)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Priority, fairness and start delay of one starting action; ``None``: Temporal's default."""

    priority: int | None = None
    """Temporal priority key: 1 is the highest; Temporal's default is 3 of 1..5."""
    fairness_key: str | None = None
    fairness_weight: float | None = None
    start_delay: StartDelay | None = None


# --- parsing ------------------------------------------------------------------------------

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(text: str) -> timedelta | None:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or ISO 8601 ``"PT5M"``/``"P1DT2H"``;
    ``None`` if ``text`` is neither (years and months, of no fixed length, are neither)."""
    text = text.strip()
    if _GO_DURATION.fullmatch(text):
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _GO_PART.findall(text)))
    iso = _ISO_DURATION.fullmatch(text)
    if iso and text not in ("P", "PT") and not text.endswith("T"):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v is not None}
        return timedelta(
            weeks=parts.get("w", 0),
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    return None


def parse_start_delay(value: Any) -> StartDelay:
    """A duration or an RFC 3339 time (text, or a decoded Avro timestamp) as a
    ``StartDelay``; ``ValueError`` says why anything else is not one."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value.isoformat()!r} has no UTC offset")
        return StartDelay(at=value)
    if not isinstance(value, str):
        raise ValueError(
            f"{value!r} is a {type(value).__name__}, not a duration or an RFC 3339 time"
        )
    duration = parse_duration(value)
    if duration is not None:
        return StartDelay(after=duration)
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (30s, 5m, 1h30m, PT5M) nor an RFC 3339 time"
        ) from None
    if at.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset (RFC 3339 times carry one: Z, +02:00)")
    return StartDelay(at=at)


def parse_priority(value: Any) -> int:
    """A priority key: a positive integer, or its decimal text; ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a positive integer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a positive integer (1 is the highest priority)")
    return value


def check_fairness_key(value: str) -> str:
    """A fairness key within Temporal's length limit; ``ValueError`` otherwise."""
    if len(value.encode()) > FAIRNESS_KEY_MAX_BYTES:
        raise ValueError(f"{value[:20]!r}... is over {FAIRNESS_KEY_MAX_BYTES} bytes")
    return value


# --- compiled -----------------------------------------------------------------------------


class ScheduleTemplates:
    """A route's ``priority``, ``fairness_key``, ``fairness_weight`` and ``start_delay``,
    parsed once; a value with no field in it is checked here, at start-up."""

    def __init__(
        self,
        priority: int | str | None,
        fairness_key: str | None,
        fairness_weight: float | None,
        start_delay: str | None,
    ) -> None:
        self.priority = _template("priority", priority)
        self.fairness_key = _template("fairness_key", fairness_key)
        self.fairness_weight = fairness_weight
        self.start_delay = _template("start_delay", start_delay)
        self.empty = priority is None and fairness_key is None and start_delay is None
        self.fixed: Schedule | None = None
        """The schedule when no field reads the event (resolved once, here)."""
        if not self.empty and not self.paths():
            try:
                self.fixed = self._resolve({})
            except RouteError as exc:
                raise ConfigError(exc.message) from exc

    def fields(self) -> dict[str, Template]:
        """The templates by route field name."""
        named = {
            "priority": self.priority,
            "fairness_key": self.fairness_key,
            "start_delay": self.start_delay,
        }
        return {name: t for name, t in named.items() if t is not None}

    def paths(self) -> list[tuple[str, tuple[str, ...]]]:
        """(route field, field path) of every event field the templates read."""
        return [(name, p) for name, t in self.fields().items() for p in t.paths()]

    def resolve(self, context: Mapping[str, Any]) -> Schedule | None:
        """The schedule for one event; ``None`` when the route sets none of the options.

        ``KeyError`` names a field the event lacks; ``RouteError`` says which value
        does not resolve and why.
        """
        if self.empty:
            return None
        if self.fixed is not None:
            return self.fixed
        return self._resolve(context)

    def _resolve(self, context: Mapping[str, Any]) -> Schedule:
        return Schedule(
            priority=_resolved("priority", self.priority, context, parse_priority),
            fairness_key=_resolved("fairness_key", self.fairness_key, context, _fairness_text),
            fairness_weight=self.fairness_weight,
            start_delay=_resolved("start_delay", self.start_delay, context, parse_start_delay),
        )


def _template(field: str, value: int | str | None) -> Template | None:
    if value is None:
        return None
    try:
        return Template.parse(str(value))
    except ConfigError as exc:
        raise ConfigError(f"field {field}: {exc.message}") from exc


def _fairness_text(value: Any) -> str:
    return check_fairness_key(str(value))


def _resolved(
    field: str,
    template: Template | None,
    context: Mapping[str, Any],
    parse: Callable[[Any], T],
) -> T | None:
    if template is None:
        return None
    value = template.value(context)
    try:
        return parse(value)
    except ValueError as exc:
        raise RouteError(f"field {field} ({template.source!r}): {exc}") from exc
