"""``POST /replays`` and ``GET /replays/{id}``.

A replay is long-running, so ``POST /replays`` checks the range (a bad one is a
422 and nothing happens) and starts a replay workflow; ``GET /replays/{id}``
reads its progress and report. With authentication on, a caller replays only
its own tenant's events (``ce_tenantid``) and sees only its own replays.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import asdict
from typing import Annotated, TypeVar

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bridge.api import lookup, problems
from bridge.api.problems import Problem
from bridge.api.state import CallerDep, State
from bridge.errors import BridgeError, ConfigError, InvalidRequestError
from bridge.replay import (
    ID_PREFIX,
    ReplayMode,
    ReplayRequest,
    replay_status,
    resolve_plan,
    start_replay,
)

router = APIRouter(tags=["replays and dead letters"])

T = TypeVar("T")
TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
ROUTE = r"^[A-Za-z0-9_.-]{1,200}$"
ReplayId = Annotated[str, Path(pattern=f"^{ID_PREFIX}[0-9a-f]{{12}}$", description="Replay id")]


class ReplayBody(BaseModel):
    """What to replay; the same parameters as ``ktb replay``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    topic: str = Field(pattern=TOPIC, description="Topic to replay")
    from_: str = Field(
        alias="from",
        min_length=1,
        max_length=64,
        description="First record: an offset, an ISO-8601 time or `earliest`",
    )
    to: str = Field(
        "now", min_length=1, max_length=64, description="Exclusive end: offset, time or `now`"
    )
    partitions: list[Annotated[int, Field(ge=0, le=100_000)]] = Field(
        default_factory=list, max_length=1000, description="Partitions (default: all)"
    )
    routes: list[Annotated[str, Field(pattern=ROUTE)]] = Field(
        default_factory=list, max_length=100, description="Routes to apply (default: all)"
    )
    mode: ReplayMode = Field(
        ReplayMode.IDEMPOTENT,
        description="`idempotent`: live workflow ids; `fresh`: a new generation of ids",
    )
    dry_run: bool = Field(False, description="Act on nothing; report what would happen")
    rate_limit: float = Field(
        0.0, ge=0, le=1_000_000, description="Records per second at most; 0: the server default"
    )


class RangeView(BaseModel):
    """Offsets ``[start, end)`` of one partition."""

    partition: int
    start: int
    end: int


class ReportView(BaseModel):
    """A replay's report, each record counted once."""

    read: int
    matched: int
    started: int
    duplicates: int
    signalled: int
    updated: int
    cancelled: int
    terminated: int
    skipped: int
    dead_lettered: int
    would_act: int = Field(description="Dry runs: records a route would act on")
    per_route: dict[str, dict[str, int]] = Field(
        description="Route → outcome (dry runs: action kind) → records"
    )
    examples: dict[str, str] = Field(description="Route → first workflow id it touched")


class ReplayAccepted(BaseModel):
    """A replay workflow was started."""

    replay_id: str
    status_url: str
    total: int = Field(description="Offsets in the range")
    ranges: list[RangeView]
    generation: str | None = Field(description="Fresh mode: the workflow id generation")


class ReplayView(BaseModel):
    """A replay's state, progress and report."""

    replay_id: str
    state: str = Field(description="running, completed, failed, canceled, terminated, timed_out")
    topic: str
    mode: str
    dry_run: bool
    generation: str | None
    total: int
    done: int = Field(description="Offsets behind the replay's position")
    report: ReportView | None = Field(description="Up to the position; final once completed")
    error: str | None = None


async def guard(awaitable: Awaitable[T]) -> T:
    """Bad input is a 422; Kafka or Temporal failing is a 503 (replay and DLQ routes)."""
    try:
        return await lookup.call(awaitable)
    except (InvalidRequestError, ConfigError) as exc:
        raise Problem(422, "invalid-request", exc.message) from exc
    except BridgeError as exc:
        raise Problem(503, "unavailable", exc.message) from exc
    except KafkaError as exc:
        raise Problem(503, "kafka-unavailable", f"Kafka did not answer: {exc}") from exc


@router.post(
    "/replays",
    summary="Start a replay of a topic range as a workflow",
    status_code=202,
    response_model=ReplayAccepted,
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def post_replay(state: State, caller: CallerDep, body: ReplayBody) -> JSONResponse:
    """Check the range (422 if wrong, nothing started) and start the replay workflow."""
    request = ReplayRequest(
        topic=body.topic,
        start=body.from_,
        end=body.to,
        partitions=list(body.partitions),
        routes=list(body.routes),
        mode=body.mode,
        dry_run=body.dry_run,
        rate_limit=body.rate_limit,
        tenant=caller.tenant if caller.authenticated else None,
    ).with_generation()
    if request.routes and state.router is not None:
        try:
            state.router.only(request.routes)
        except ConfigError as exc:
            raise Problem(422, "invalid-request", exc.message) from exc
    plan = await guard(resolve_plan(state.settings, request))
    replay_id = await guard(start_replay(state.client, state.settings, plan))
    accepted = ReplayAccepted(
        replay_id=replay_id,
        status_url=f"/replays/{replay_id}",
        total=plan.total,
        ranges=[RangeView(partition=r.partition, start=r.start, end=r.end) for r in plan.ranges],
        generation=request.generation or None,
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


@router.get(
    "/replays/{replay_id}",
    summary="A replay's state, progress and report",
    response_model=ReplayView,
    responses=problems.responses(400, 401, 404, 422, 503),
)
async def get_replay(state: State, caller: CallerDep, replay_id: ReplayId) -> ReplayView:
    """Progress while running, the final report once completed; another tenant's is a 404."""
    status = await guard(replay_status(state.client, replay_id, state.settings.api_query_timeout_s))
    if status is None or not caller.may_see(status.tenant):
        raise Problem(404, "not-found", f"no replay {replay_id!r}")
    report = ReportView.model_validate(asdict(status.report)) if status.report else None
    return ReplayView(
        replay_id=status.replay_id,
        state=status.state,
        topic=status.topic,
        mode=status.mode,
        dry_run=status.dry_run,
        generation=status.generation or None,
        total=status.total,
        done=status.done,
        report=report,
        error=status.error,
    )
