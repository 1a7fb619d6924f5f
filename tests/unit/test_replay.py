"""Pure logic of replays and dead letters: bounds, reports, progress lines, letter parsing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflow.v1 import WorkflowExecutionInfo
from temporalio.api.workflowservice.v1 import (
    ListWorkflowExecutionsRequest,
    ListWorkflowExecutionsResponse,
)
from temporalio.service import RPCError, RPCStatusCode

from bridge import dlq
from bridge.dispatch import Outcome, Result
from bridge.dlq import LetterRef, letter_of
from bridge.errors import InvalidRequestError
from bridge.replay import (
    Bound,
    Known,
    KnownWorkflows,
    PartitionRange,
    ReplayMode,
    ReplayPlan,
    ReplayReport,
    ReplayRequest,
    parse_bound,
    progress_line,
)


@dataclass
class Record:
    topic: str = "orders"
    partition: int = 0
    offset: int = 0
    timestamp: int = 0
    key: bytes | None = b"k"
    value: bytes | None = b"v"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def test_bounds_offsets_times_and_open_ends() -> None:
    assert parse_bound("42", end=False) == Bound(offset=42)
    assert parse_bound("earliest", end=False).open
    assert parse_bound("NOW", end=True).open
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    expected = Bound(time_ms=int(moment.timestamp() * 1000))
    assert parse_bound("2026-01-02T03:04:05Z", end=False) == expected
    assert parse_bound("2026-01-02T03:04:05", end=True) == expected  # naive means UTC
    assert parse_bound("2026-01-02T05:04:05+02:00", end=True) == expected


@pytest.mark.parametrize(
    ("text", "end"), [("now", False), ("earliest", True), ("-1", False), ("soon", True)]
)
def test_bad_bounds_are_request_errors(text: str, end: bool) -> None:
    with pytest.raises(InvalidRequestError, match="--to" if end else "--from"):
        parse_bound(text, end=end)


def test_fresh_requests_get_a_generation_suffix_idempotent_ones_none() -> None:
    idem = ReplayRequest("orders", "0").with_generation()
    assert idem.generation == "" and idem.id_suffix == ""
    fresh = ReplayRequest("orders", "0", mode=ReplayMode.FRESH).with_generation()
    assert fresh.generation and fresh.id_suffix == f"-replay-{fresh.generation}"
    assert fresh.with_generation() is fresh
    other = ReplayRequest("orders", "0", mode=ReplayMode.FRESH).with_generation()
    assert other.generation != fresh.generation


def test_plan_selects_by_half_open_time_range_and_tenant() -> None:
    plan = ReplayPlan(ReplayRequest("orders", "0"), [PartitionRange(0, 0, 10)], 1000, 2000)
    assert not plan.selects(Record(timestamp=999))
    assert plan.selects(Record(timestamp=1000))
    assert plan.selects(Record(timestamp=1999))
    assert not plan.selects(Record(timestamp=2000))
    assert plan.total == 10
    tenant = ReplayPlan(ReplayRequest("orders", "0", tenant="acme"), [PartitionRange(0, 3, 5)])
    assert tenant.selects(Record(headers=[("ce_tenantid", b"acme")]))
    assert not tenant.selects(Record(headers=[("ce_tenantid", b"other")]))
    assert not tenant.selects(Record())
    assert tenant.total == 2
    # The bridge's own reading of the header: any case, the last one wins.
    assert tenant.selects(Record(headers=[("CE_TenantId", b"acme")]))
    assert not tenant.selects(Record(headers=[("ce_tenantid", b"acme"), ("CE_TENANTID", b"x")]))


def test_report_counts_each_outcome_once_per_record() -> None:
    report = ReplayReport()
    report.add(Result(Outcome.STARTED, "start", "start", "order-1"))
    report.add(Result(Outcome.DUPLICATE, "start", "start", "order-2"))
    report.add(Result(Outcome.SIGNALLED, "pay", "signal", "order-1"))
    report.add(Result(Outcome.SKIPPED, detail="no route matched"))
    report.add(Result(Outcome.DEAD_LETTERED, detail="unmatched: no route"))
    report.add(Result(Outcome.PARKED, detail="parked behind orders.dlq:0:4"))
    assert report.counters() == {
        "read": 6, "matched": 3, "started": 1, "duplicates": 1, "signalled": 1, "updated": 0,
        "cancelled": 0, "terminated": 0, "skipped": 1, "dead_lettered": 1, "parked": 1,
        "would_act": 0,
    }  # fmt: skip
    assert report.per_route["start"] == {"started": 1, "duplicate": 1}
    assert report.per_route["(no route)"] == {"skipped": 1, "dead_lettered": 1, "parked": 1}
    assert report.examples == {"start": "order-1", "pay": "order-1"}
    copy = report.snapshot()
    report.add(Result(Outcome.STARTED, "start", "start", "order-3"))
    assert copy.read == 6 and copy.per_route["start"] == {"started": 1, "duplicate": 1}


def test_dry_run_report_tallies_actions_per_route() -> None:
    report = ReplayReport()
    for n in range(3):
        report.add(Result(Outcome.DRY_RUN, "start", "start", f"order-{n}"))
    assert report.would_act == 3 and report.started == 0
    assert report.per_route == {"start": {"start": 3}}
    assert report.examples == {"start": "order-0"}


def test_progress_line_shows_count_rate_and_eta() -> None:
    line = progress_line(250, 500, 2.0, width=10)
    assert line.startswith("[#####.....]")
    assert "250/500" in line and "50%" in line and "125 rec/s" in line
    assert "ETA 0:00:02" in line
    assert progress_line(500, 500, 1.0).endswith("done")
    assert "ETA --:--:--" in progress_line(0, 500, 0.0)


def test_letter_refs() -> None:
    assert LetterRef.parse("7") == LetterRef(0, 7)
    assert LetterRef.parse("2:15") == LetterRef(2, 15)
    assert str(LetterRef(2, 15)) == "2:15"
    with pytest.raises(InvalidRequestError):
        LetterRef.parse("x:1")


def test_dead_letter_headers_are_read_and_the_original_headers_kept() -> None:
    record = Record(
        topic="orders.dlq",
        offset=4,
        headers=[
            ("ce_id", b"e-1"),
            ("ce_tenantid", b"acme"),
            (dlq.REDRIVE_COUNT, b"2"),
            (dlq.ERROR_TYPE, b"route_error"),
            (dlq.ERROR_MESSAGE, b"no field"),
            (dlq.ORIGINAL_TOPIC, b"orders"),
            (dlq.ORIGINAL_PARTITION, b"1"),
            (dlq.ORIGINAL_OFFSET, b"17"),
            (dlq.FAILED_AT, b"2026-01-01T00:00:00+00:00"),
        ],
    )
    letter = letter_of(record)
    assert letter.ref == LetterRef(0, 4)
    assert (letter.error_type, letter.error_message) == ("route_error", "no field")
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "orders", 1, 17,
    )  # fmt: skip
    assert letter.redrive_count == 2 and letter.tenant == "acme"
    assert letter.headers == [
        ("ce_id", b"e-1"), ("ce_tenantid", b"acme"), (dlq.REDRIVE_COUNT, b"2"),
    ]  # fmt: skip
    bare = letter_of(Record(topic="payments.dlq"))
    assert bare.original_topic == "payments" and bare.redrive_count == 0


class _Visibility:
    """Answers ``WorkflowId IN (...)`` queries from a set, or rejects queries over a size.

    It is both the client and its ``workflow_service``: pages of at most ``page``
    executions, newest run first, and each query can be held until ``release``.
    """

    namespace = "default"

    def __init__(self, existing: set[str], max_ids: int, page: int = 1000) -> None:
        self.existing = existing
        self.max_ids = max_ids
        self.page = page
        self.queries: list[int] = []
        self.running = 0
        self.most_running = 0
        self.release: asyncio.Event | None = None
        self.workflow_service = self

    async def list_workflow_executions(
        self, request: ListWorkflowExecutionsRequest, retry: bool
    ) -> ListWorkflowExecutionsResponse:
        ids = [p.strip("' ") for p in request.query.split("(", 1)[1].rstrip(")").split(",")]
        start = int(request.next_page_token or b"0")
        if not start:
            self.queries.append(len(ids))
        if len(ids) > self.max_ids:
            raise RPCError("query too long", RPCStatusCode.INVALID_ARGUMENT, b"")
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.release is not None:
                await self.release.wait()
        finally:
            self.running -= 1
        runs = [
            (workflow_id, run)
            for workflow_id in ids
            if workflow_id in self.existing
            for run in (f"run-{workflow_id}", f"older-run-{workflow_id}")
        ]
        end = start + self.page
        return ListWorkflowExecutionsResponse(
            executions=[
                WorkflowExecutionInfo(execution=WorkflowExecution(workflow_id=w, run_id=r))
                for w, r in runs[start:end]
            ],
            next_page_token=str(end).encode() if end < len(runs) else b"",
        )


async def test_lookups_are_batched_and_shrink_when_the_server_rejects_them() -> None:
    visibility = _Visibility({"a1", "a3"}, max_ids=40)
    known = KnownWorkflows(visibility, batch=100, window_s=0.001)  # type: ignore[arg-type]
    ids = [f"a{n}" for n in range(100)]
    # The first batch is rejected: every id falls back to acting (None), the batch halves.
    assert set(await asyncio.gather(*(known.lookup(i) for i in ids))) == {None}
    assert visibility.queries == [100] and known.batch == 50
    await asyncio.gather(*(known.lookup(i) for i in ids))
    assert known.batch == 25
    found = await asyncio.gather(*(known.lookup(i) for i in ids))
    assert found[1] == Known("run-a1", None) and found[3] == Known("run-a3", None)
    assert found.count(None) == 98
    assert visibility.queries[-4:] == [25, 25, 25, 25]
    assert await known.lookup("it's") is None  # not quotable: never queried


async def test_lookups_stop_when_visibility_cannot_answer_them() -> None:
    visibility = _Visibility(set(), max_ids=0)
    known = KnownWorkflows(visibility, batch=30, window_s=0.001)  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.gather(*(known.lookup(f"b{n}") for n in range(30)))
    assert not known.enabled
    asked = len(visibility.queries)
    assert await known.lookup("b1") is None and len(visibility.queries) == asked


async def test_lookups_read_every_page_and_take_the_newest_run() -> None:
    existing = {f"p{n}" for n in range(0, 60, 2)}
    visibility = _Visibility(existing, max_ids=100, page=7)
    known = KnownWorkflows(visibility, batch=100, window_s=0.001)  # type: ignore[arg-type]
    found = await asyncio.gather(*(known.lookup(f"p{n}") for n in range(60)))
    assert visibility.queries == [60]
    assert found == [Known(f"run-p{n}", None) if n % 2 == 0 else None for n in range(60)]


async def test_ids_asked_for_while_every_query_runs_go_out_together() -> None:
    visibility = _Visibility({"q3", "q50"}, max_ids=100)
    visibility.release = asyncio.Event()
    known = KnownWorkflows(visibility, batch=40, window_s=0.001, queries=2)  # type: ignore[arg-type]
    first = [asyncio.create_task(known.lookup(f"q{n}")) for n in range(2)]
    await asyncio.sleep(0.01)  # q0 and q1 went out within one window: one query
    second = [asyncio.create_task(known.lookup(f"q{n}")) for n in range(2, 4)]
    await asyncio.sleep(0.01)  # a second query, and with it every slot is taken
    rest = [asyncio.create_task(known.lookup(f"q{n}")) for n in range(4, 100)]
    await asyncio.sleep(0.01)
    assert visibility.queries == [2, 2] and visibility.running == 2
    visibility.release.set()
    found = await asyncio.gather(*first, *second, *rest)
    # The 96 that waited went out in batches of at most 40, never more than 2 at once.
    assert visibility.queries == [2, 2, 40, 40, 16]
    assert visibility.most_running == 2
    assert found[3] == Known("run-q3", None) and found[50] == Known("run-q50", None)
    assert found.count(None) == 98
