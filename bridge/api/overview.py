"""``GET /overview``: what the console's first page shows, in one answer.

Readiness stays ``/readyz``; this gathers the rest, each part read on its own so
that one source not answering (Kafka, Temporal, the database) leaves the others
shown and is named in ``unavailable``. Everything tenant-owned is the caller's
tenant's only: activity, dead letters, parked records and replays. Lag and paused
partitions are the bridge's, shared by every tenant (as ``/readyz`` shows pauses).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from temporalio.service import RPCError

from bridge.api import problems
from bridge.api.auth import Caller
from bridge.api.models import PausedView
from bridge.api.problems import Problem
from bridge.api.state import ApiState, CallerDep, State
from bridge.dlq import letter_page
from bridge.dlq.publisher import dlq_topic
from bridge.errors import BridgeError, DatabaseUnavailable, InvalidRequestError
from bridge.kafka.topics import consumer_lag
from bridge.policies import list_parked, paused_partitions
from bridge.replay.workflow import MEMO_KEY, REPLAY_WORKFLOW

router = APIRouter(tags=["operations"])
log = logging.getLogger("ktb.api")
T = TypeVar("T")

PART_TIMEOUT_S = 5.0
"""How long one part may take before it is reported unavailable."""
LETTERS_COUNTED = 1000
"""Dead letters counted per topic at most (``more`` says there were more)."""
REPLAYS_LISTED = 50


class LagView(BaseModel):
    """The bridge's consumer group on one partition."""

    topic: str
    partition: int
    committed: int | None = Field(description="Committed offset; null: none committed yet")
    end: int
    lag: int


class ActivityView(BaseModel):
    """Records the bridge handled in one minute with one outcome."""

    minute: datetime
    outcome: str
    records: int


class LetterCount(BaseModel):
    """Dead letters of one error type on one dead-letter topic."""

    topic: str
    error_type: str | None
    letters: int
    more: bool = Field(description="Only the first letters were counted: there are more")


class ParkedCount(BaseModel):
    """Records parked on a topic behind dead letters of their keys."""

    topic: str
    records: int


class ReplaySummary(BaseModel):
    """A replay still running."""

    replay_id: str
    topic: str | None
    dry_run: bool
    started: datetime | None
    status_url: str


class Overview(BaseModel):
    """The bridge at a glance, as the caller's tenant may see it."""

    topics: list[str] = Field(description="The topics the routes read")
    dead_letter_topics: list[str]
    lag: list[LagView]
    activity: list[ActivityView] = Field(description="Per minute over the last `minutes`")
    minutes: int
    dead_letters: list[LetterCount]
    paused: list[PausedView]
    parked: list[ParkedCount]
    replays: list[ReplaySummary]
    unavailable: dict[str, str] = Field(description="Parts that could not be read, and why")


async def _part(name: str, awaitable: Awaitable[T], empty: T, unavailable: dict[str, str]) -> T:
    """The value of one part, or ``empty`` with the reason in ``unavailable``."""
    try:
        return await asyncio.wait_for(awaitable, PART_TIMEOUT_S)
    except (BridgeError, DatabaseUnavailable, KafkaError, RPCError, Problem, TimeoutError) as exc:
        reason = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
        log.warning("overview: %s not read: %s", name, reason or type(exc).__name__)
        unavailable[name] = reason or type(exc).__name__
        return empty


def _topics(state: ApiState) -> list[str]:
    router = state.router
    return sorted({r.topic for r in router.config.routes}) if router is not None else []


async def _dead_letters(state: ApiState, caller: Caller, topics: list[str]) -> list[LetterCount]:
    tenant = caller.tenant if caller.authenticated else None
    out: list[LetterCount] = []
    for topic in topics:
        try:
            page = await letter_page(state.settings, topic, limit=LETTERS_COUNTED, tenant=tenant)
        except InvalidRequestError:
            continue  # no such topic yet: nothing was ever dead-lettered from it
        counts = Counter(letter.error_type for letter in page.letters)
        more = page.next_cursor is not None
        out += [
            LetterCount(topic=topic, error_type=error_type, letters=n, more=more)
            for error_type, n in sorted(counts.items(), key=lambda x: str(x[0]))
        ]
    return out


async def _parked(state: ApiState, caller: Caller, topics: list[str]) -> list[ParkedCount]:
    tenant = caller.tenant if caller.authenticated else None
    out = []
    for topic in topics:
        records = await list_parked(state.settings, topic, tenant=tenant)
        if records:
            out.append(ParkedCount(topic=topic, records=len(records)))
    return out


async def _replays(state: ApiState, caller: Caller) -> list[ReplaySummary]:
    query = f"WorkflowType = '{REPLAY_WORKFLOW}' AND ExecutionStatus = 'Running'"
    out = []
    async for execution in state.client.list_workflows(query, limit=REPLAYS_LISTED):
        summary = (await execution.memo()).get(MEMO_KEY) or {}
        if not caller.may_see(summary.get("tenant")):
            continue
        out.append(
            ReplaySummary(
                replay_id=execution.id,
                topic=summary.get("topic"),
                dry_run=bool(summary.get("dry_run")),
                started=execution.start_time,
                status_url=f"/replays/{execution.id}",
            )
        )
    return out


async def _activity(state: ApiState, caller: Caller, minutes: int) -> list[ActivityView]:
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    rows = await state.store.activity(caller.scope, since)
    return [ActivityView(minute=m, outcome=o, records=n) for m, o, n in rows]


async def _lag(state: ApiState, topics: list[str]) -> list[LagView]:
    lags = await consumer_lag(state.settings, state.settings.group_id, topics)
    return [LagView(**asdict(x), lag=x.lag) for x in lags]


async def _paused(state: ApiState) -> list[PausedView]:
    return [PausedView.model_validate(asdict(p)) for p in await paused_partitions(state.settings)]


@router.get(
    "/overview",
    summary="Lag, activity, dead letters, parked and paused partitions, running replays",
    response_model=Overview,
    responses=problems.responses(401, 422),
)
async def get_overview(
    state: State,
    caller: CallerDep,
    minutes: Annotated[int, Query(ge=1, le=24 * 60, description="Activity window")] = 15,
) -> Overview:
    """Everything the console's overview shows; parts that cannot be read are named."""
    unavailable: dict[str, str] = {}
    topics = _topics(state)
    dlqs = [dlq_topic(t) for t in topics]
    lag, activity, letters, paused, parked, replays = await asyncio.gather(
        _part("lag", _lag(state, topics), [], unavailable),
        _part("activity", _activity(state, caller, minutes), [], unavailable),
        _part("dead_letters", _dead_letters(state, caller, dlqs), [], unavailable),
        _part("paused", _paused(state), [], unavailable),
        _part("parked", _parked(state, caller, topics), [], unavailable),
        _part("replays", _replays(state, caller), [], unavailable),
    )
    return Overview(
        topics=topics,
        dead_letter_topics=dlqs,
        lag=lag,
        activity=activity,
        minutes=minutes,
        dead_letters=letters,
        paused=paused,
        parked=parked,
        replays=replays,
        unavailable=unavailable,
    )
