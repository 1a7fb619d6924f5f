"""``GET /dlq`` and ``POST /dlq/redrive``: list dead letters a page at a time, redrive them.

With authentication on, a caller lists and redrives only its own tenant's
letters (``ce_tenantid``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from bridge.api import problems
from bridge.api.problems import Problem
from bridge.api.replays import TOPIC, guard
from bridge.api.state import CallerDep, State
from bridge.dlq import (
    MAX_PAGE_LIMIT,
    PAGE_LIMIT,
    Cursor,
    LetterRef,
    letter_page,
    redrive,
    show,
)
from bridge.errors import InvalidRequestError
from bridge.policies import parked_counts

router = APIRouter(tags=["replays and dead letters"])

LETTER = r"^[0-9]{1,19}(:[0-9]{1,19})?$"
CURSOR = r"^[A-Za-z0-9_-]{1,32768}$"


class RedrivenView(BaseModel):
    """Where a redriven letter went."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    topic: str
    partition: int
    offset: int
    redrive_count: int
    at: str


class DeadLetterView(BaseModel):
    """One dead letter."""

    partition: int
    offset: int
    error_type: str | None
    error_message: str | None
    original_topic: str
    original_partition: int | None
    original_offset: int | None
    failed_at: str | None
    redrive_count: int
    event_id: str | None
    event_type: str | None
    key: str | None
    redriven: RedrivenView | None = Field(description="The latest redrive of this letter")
    copy_of: str | None = Field(
        None,
        description="`PARTITION:OFFSET` of an earlier letter of the same original record "
        "(dead-lettered again after a redelivery); redrive skips copies",
    )
    record_in_letter: bool = Field(
        True,
        description="False for `too_large_to_copy` letters: the record was too large to "
        "copy and stays in its original topic (at the original coordinates, until "
        "retention), where `ktb dlq show` and redrive read it",
    )
    original_error_type: str | None = Field(
        None, description="`too_large_to_copy` letters: the error the record failed with"
    )
    original_error_message: str | None = Field(
        None, description="`too_large_to_copy` letters: that error's message"
    )
    original_size: int | None = Field(
        None, description="`too_large_to_copy` letters: bytes of the record's key, value, headers"
    )
    parked: int = Field(
        0,
        description="Records of the letter's key parked behind it (`on_failure: park_key`) "
        "until it is redriven or discarded",
    )


class DeadLetterPage(BaseModel):
    """One page of the letters of a dead-letter topic, in partition/offset order."""

    topic: str
    letters: list[DeadLetterView] = Field(
        description="At most `limit` letters; fewer (even none) when the filters matched "
        "little of the records read for this page: go on while `next_cursor` is set"
    )
    next_cursor: str | None = Field(
        description="Opaque cursor of the next page (the next offset of every partition): "
        "pass it as `cursor` with the same topic. `null` once every partition was read "
        "to its end as of this request"
    )


class RedriveBody(BaseModel):
    """Which dead letters to republish."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(pattern=TOPIC, description="Dead-letter topic, e.g. `orders.dlq`")
    error_type: str | None = Field(None, max_length=200, description="Only this error type")
    offsets: list[Annotated[str, Field(pattern=LETTER)]] = Field(
        default_factory=list, max_length=1000, description="`OFFSET` or `PARTITION:OFFSET`"
    )
    max_redrives: int | None = Field(
        None, ge=1, le=1000, description="Refuse letters redriven this often"
    )
    again: bool = Field(False, description="Also republish letters an earlier redrive sent")


class RefusedView(BaseModel):
    """A letter redrive refused."""

    letter: str
    redrive_count: int
    reason: str


class RedriveResult(BaseModel):
    """What a redrive did."""

    dlq_topic: str
    selected: int
    redriven: list[RedrivenView]
    refused: list[RefusedView]
    already_redriven: list[str]
    copies: list[str] = Field(
        default_factory=list, description="Letters skipped as copies of an earlier letter"
    )


@router.get(
    "/dlq",
    summary="List the dead letters of a dead-letter topic",
    response_model=DeadLetterPage,
    responses=problems.responses(400, 401, 422, 503),
)
async def get_dlq(
    state: State,
    caller: CallerDep,
    topic: Annotated[str, Query(pattern=TOPIC, description="Dead-letter topic, e.g. orders.dlq")],
    error_type: Annotated[
        str | None, Query(max_length=200, description="Only letters of this error type")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Letters per page at most")
    ] = PAGE_LIMIT,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR, description="`next_cursor` of the previous page; none: the start"),
    ] = None,
) -> DeadLetterPage:
    """A page of letters: offset, error type and message, original coordinates, redrives.

    A page reads at most 10 records per `limit` (at least 1,000) of the topic, so it may
    hold fewer letters than `limit` and still have a `next_cursor`.
    """
    try:
        start = Cursor.decode(cursor, topic) if cursor is not None else None
    except InvalidRequestError as exc:
        raise Problem(422, "invalid-request", exc.message) from exc
    page = await guard(
        letter_page(
            state.settings,
            topic,
            cursor=start,
            limit=limit,
            error_type=error_type,
            tenant=caller.tenant if caller.authenticated else None,
        )
    )
    parked = await guard(parked_counts(state.settings, topic))
    return DeadLetterPage(
        topic=topic,
        letters=[
            DeadLetterView.model_validate({**x.summary(), "parked": parked.get(str(x.ref), 0)})
            for x in page.letters
        ],
        next_cursor=page.next_cursor.encode() if page.next_cursor else None,
    )


@router.get(
    "/dlq/{topic}/letters/{letter}",
    summary="One dead letter in full: its record's headers and data (decoded when possible)",
    responses={
        200: {
            "description": "The letter as `ktb dlq show` prints it",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **problems.responses(401, 404, 422, 503),
    },
)
async def get_letter(
    state: State,
    caller: CallerDep,
    topic: Annotated[str, Path(pattern=TOPIC, description="Dead-letter topic, e.g. orders.dlq")],
    letter: Annotated[str, Path(pattern=LETTER, description="`OFFSET` or `PARTITION:OFFSET`")],
) -> dict[str, Any]:
    """The letter's error headers and its original record; another tenant's is a 404."""
    tenant = caller.tenant if caller.authenticated else None

    async def shown() -> dict[str, Any]:
        try:
            return await show(state.settings, topic, LetterRef.parse(letter), state.catalog,
                              tenant=tenant)  # fmt: skip
        except InvalidRequestError as exc:
            # No such letter, or another tenant's: the same answer.
            raise Problem(404, "not-found", exc.message) from exc

    return await guard(shown())


@router.post(
    "/dlq/redrive",
    summary="Republish dead letters to their original topics",
    response_model=RedriveResult,
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def post_redrive(state: State, caller: CallerDep, body: RedriveBody) -> RedriveResult:
    """Redrive the selected letters (all by default); refused ones are listed with the reason."""
    report = await guard(
        redrive(
            state.settings,
            body.topic,
            error_type=body.error_type,
            refs=[LetterRef.parse(x) for x in body.offsets],
            max_redrives=body.max_redrives,
            again=body.again,
            tenant=caller.tenant if caller.authenticated else None,
        )
    )
    return RedriveResult.model_validate(report.as_dict())
