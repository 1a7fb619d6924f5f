"""The failure policies over HTTP (``on_failure: park_key | pause``, ``bridge.policies``):
``POST /dlq/discard`` beside ``POST /dlq/redrive``, ``GET /parked`` and
``POST /bridge/resume``.

With authentication on, a caller discards only its own tenant's letters, sees only
its own parked records and resumes only a partition paused at its own record.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from bridge.api import problems
from bridge.api.dlq import LETTER
from bridge.api.models import PausedView
from bridge.api.replays import TOPIC, guard
from bridge.api.state import CallerDep, State
from bridge.dlq import LetterRef
from bridge.policies import discard, list_parked, resume

router = APIRouter(tags=["replays and dead letters"])


class DiscardBody(BaseModel):
    """Which dead letters to give up on."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(pattern=TOPIC, description="Dead-letter topic, e.g. `orders.dlq`")
    offsets: list[Annotated[str, Field(pattern=LETTER)]] = Field(
        min_length=1, max_length=1000, description="`OFFSET` or `PARTITION:OFFSET`"
    )


class ReleasedView(BaseModel):
    """A key a discarded letter blocked: the bridge holding its partition releases it."""

    letter: str
    topic: str
    partition: int
    key: str
    parked: int = Field(description="Records parked behind the letter")


class DiscardResult(BaseModel):
    """What a discard did."""

    dlq_topic: str
    released: list[ReleasedView]
    not_blocking: list[str] = Field(description="Discarded letters that blocked no key")


class ParkedView(BaseModel):
    """A record parked behind a dead letter of its key."""

    partition: int
    offset: int = Field(description="Its offset in its own topic")
    parked_offset: int = Field(description="Its offset in `<topic>.parked`")
    key: str | None
    blocked_by: str = Field(description="The letter it was parked behind")
    blocking_letter: str = Field(description="The letter that holds it now")
    parked_at: str | None
    event_id: str | None
    event_type: str | None
    released_when: str


class ParkedList(BaseModel):
    """What is parked on a topic now, in partition/offset order."""

    topic: str
    records: list[ParkedView]


class ResumeBody(BaseModel):
    """A paused partition to resume."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(pattern=TOPIC)
    partition: int = Field(ge=0, lt=2**31)
    skip: bool = Field(False, description="Dead-letter the record it stopped at and go on")


class ResumeResult(PausedView):
    """The pause an operator decided on; the bridge holding the partition acts on it."""

    reason: str
    decision: str


@router.post(
    "/dlq/discard",
    summary="Give up on dead letters, releasing the keys they block",
    response_model=DiscardResult,
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def post_discard(state: State, caller: CallerDep, body: DiscardBody) -> DiscardResult:
    """Each key a letter blocks (`park_key`) is released: its parked records are acted on
    in offset order by the bridge holding its partition, then it flows live again."""
    report = await guard(
        discard(
            state.settings,
            body.topic,
            [LetterRef.parse(x) for x in body.offsets],
            tenant=caller.tenant if caller.authenticated else None,
        )
    )
    return DiscardResult.model_validate(report.as_dict())


@router.get(
    "/parked",
    summary="What is parked on a topic and why",
    response_model=ParkedList,
    responses=problems.responses(400, 401, 422, 503),
)
async def get_parked(
    state: State,
    caller: CallerDep,
    topic: Annotated[str, Query(pattern=TOPIC, description="The topic, e.g. orders")],
) -> ParkedList:
    """Every record a blocked key holds parked, with the letter that blocks it."""
    records = await guard(
        list_parked(state.settings, topic, tenant=caller.tenant if caller.authenticated else None)
    )
    return ParkedList(topic=topic, records=[ParkedView.model_validate(r) for r in records])


@router.post(
    "/bridge/resume",
    summary="Resume a paused partition: retry its record, or skip it",
    response_model=ResumeResult,
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def post_resume(state: State, caller: CallerDep, body: ResumeBody) -> ResumeResult:
    """The bridge holding the partition tries the record again (it pauses again if it
    fails), or with `skip` dead-letters it and goes on. 422 if it is not paused."""
    pause = await guard(
        resume(
            state.settings,
            body.topic,
            body.partition,
            skip=body.skip,
            tenant=caller.tenant if caller.authenticated else None,
        )
    )
    decision = pause.decision.value if pause.decision else "retry"
    return ResumeResult.model_validate({**asdict(pause), "decision": decision})
