"""Replay: read a range of a topic again and send every record through the bridge's ingress.

A request (``plan``) resolves to offsets once; ``ReplayRunner`` (``runner``) reads
them with a consumer of its own and acts on each record through the live
``Ingress`` on the live per-key engine; idempotent replays answer starts of
workflows that exist from batched visibility lookups (``lookups``); the report
counts each record once (``report``). A replay runs in the foreground
(``run_replay``) or as a Temporal workflow that survives worker crashes
(``workflow``).
"""

from typing import TYPE_CHECKING

from bridge import lazy

if TYPE_CHECKING:
    from bridge.errors import ReplayError
    from bridge.replay.lookups import Known, KnownWorkflows, ReplayDispatcher
    from bridge.replay.plan import (
        Bound,
        PartitionRange,
        ReplayMode,
        ReplayPlan,
        ReplayRequest,
        format_ms,
        new_generation,
        parse_bound,
        resolve_plan,
    )
    from bridge.replay.report import ReplayCheckpoint, ReplayReport, progress_line
    from bridge.replay.runner import (
        ProgressCallback,
        ReplayRunner,
        replay_ingress,
        replay_router,
        run_replay,
    )
    from bridge.replay.workflow import (
        ID_PREFIX,
        ReplayActivities,
        ReplayStatus,
        ReplayWorkflow,
        last_heartbeat,
        replay_status,
        run_replay_worker,
        start_replay,
    )
    from bridge.temporal.sandbox import BRIDGE_RUNNER as REPLAY_RUNNER

# Grouped by role, sorted within each group (the groups read better than one sorted list).
__all__ = [  # noqa: RUF022
    # what to replay
    "Bound",
    "PartitionRange",
    "ReplayError",
    "ReplayMode",
    "ReplayPlan",
    "ReplayRequest",
    "format_ms",
    "new_generation",
    "parse_bound",
    "resolve_plan",
    # what it did
    "ReplayCheckpoint",
    "ReplayReport",
    "progress_line",
    # running it here
    "ProgressCallback",
    "ReplayRunner",
    "replay_ingress",
    "replay_router",
    "run_replay",
    # idempotent replays of processed ranges
    "Known",
    "KnownWorkflows",
    "ReplayDispatcher",
    # replays as workflows
    "ID_PREFIX",
    "REPLAY_RUNNER",
    "ReplayActivities",
    "ReplayStatus",
    "ReplayWorkflow",
    "last_heartbeat",
    "replay_status",
    "run_replay_worker",
    "start_replay",
]

__getattr__, __dir__ = lazy.exports(
    __name__,
    globals(),
    {
        "bridge.errors": ["ReplayError"],
        "bridge.replay.lookups": ["Known", "KnownWorkflows", "ReplayDispatcher"],
        "bridge.replay.plan": [
            "Bound",
            "PartitionRange",
            "ReplayMode",
            "ReplayPlan",
            "ReplayRequest",
            "format_ms",
            "new_generation",
            "parse_bound",
            "resolve_plan",
        ],
        "bridge.replay.report": ["ReplayCheckpoint", "ReplayReport", "progress_line"],
        "bridge.replay.runner": [
            "ProgressCallback",
            "ReplayRunner",
            "replay_ingress",
            "replay_router",
            "run_replay",
        ],
        "bridge.replay.workflow": [
            "ID_PREFIX",
            "ReplayActivities",
            "ReplayStatus",
            "ReplayWorkflow",
            "last_heartbeat",
            "replay_status",
            "run_replay_worker",
            "start_replay",
        ],
    },
    # The workflow lives in the ``bridge`` package: ``bridge.temporal.sandbox`` says why.
    {"REPLAY_RUNNER": "bridge.temporal.sandbox:BRIDGE_RUNNER"},
)
