"""What a replay did: the report (each record counted once), checkpoints, the progress line."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.dispatch import Outcome, Result

UNROUTED = "(no route)"


_COUNTERS = {
    Outcome.STARTED: "started",
    Outcome.DUPLICATE: "duplicates",
    Outcome.SIGNALLED: "signalled",
    Outcome.UPDATED: "updated",
    Outcome.CANCELLED: "cancelled",
    Outcome.TERMINATED: "terminated",
    Outcome.SKIPPED: "skipped",
    Outcome.DEAD_LETTERED: "dead_lettered",
    Outcome.PARKED: "parked",
    Outcome.DRY_RUN: "would_act",
}


@dataclass
class ReplayReport:
    """What a replay did (or, in a dry run, would do), counted once per record."""

    read: int = 0
    matched: int = 0
    started: int = 0
    duplicates: int = 0
    signalled: int = 0
    updated: int = 0
    cancelled: int = 0
    terminated: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    parked: int = 0
    """Records of a key blocked by a dead letter, not acted on (``on_failure: park_key``)."""
    would_act: int = 0
    """Dry runs: records a route would act on."""
    per_route: dict[str, dict[str, int]] = field(default_factory=dict)
    """Route → outcome (or, in a dry run, action kind) → records."""
    examples: dict[str, str] = field(default_factory=dict)
    """Route → the first workflow id it touched (or would touch)."""

    def add(self, result: Result) -> None:
        """Count one record's result."""
        self.read += 1
        outcome = result.outcome
        name = _COUNTERS[outcome]
        setattr(self, name, getattr(self, name) + 1)
        route = result.route or UNROUTED
        if result.route is not None:
            self.matched += 1
            if result.workflow_id and route not in self.examples:
                self.examples[route] = result.workflow_id
        label = (result.action or "") if outcome is Outcome.DRY_RUN else outcome.value
        tally = self.per_route.setdefault(route, {})
        tally[label] = tally.get(label, 0) + 1

    def snapshot(self) -> ReplayReport:
        """An independent copy (heartbeats and signals serialise it later)."""
        return ReplayReport(
            **{name: getattr(self, name) for name in ("read", "matched", *_COUNTERS.values())},
            per_route={k: dict(v) for k, v in self.per_route.items()},
            examples=dict(self.examples),
        )

    def counters(self) -> dict[str, int]:
        """The scalar counters, in report order."""
        return {name: getattr(self, name) for name in ("read", "matched", *_COUNTERS.values())}


@dataclass
class ReplayCheckpoint:
    """Where a replay is: next offset per range (plan order) and the report up to there."""

    positions: list[int]
    report: ReplayReport
    total: int = 0
    """Offsets in the plan."""
    remaining: int = 0
    """Offsets of the plan not yet behind the positions."""

    @property
    def done(self) -> int:
        """Offsets of the plan behind the positions."""
        return self.total - self.remaining


def progress_line(done: int, total: int, elapsed: float, width: int = 30) -> str:
    """``[#####.....]  250/500  50%  1,234 rec/s  ETA 0:00:02`` for a terminal."""
    total = max(total, 1)
    share = min(1.0, done / total)
    filled = int(share * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    if rate > 0 and done < total:
        left = int((total - done) / rate)
        eta = f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    elif done >= total:
        eta = "done"
    else:
        eta = "ETA --:--:--"
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done:,}/{total:,} {share:4.0%}  {rate:,.0f} rec/s  {eta}"
