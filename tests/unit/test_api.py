"""Pure parts of the HTTP API: keys, CloudEvents parsing, queries, provenance batches."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from bridge.api import event_view, lookup
from bridge.api.app import BodyLimit
from bridge.api.auth import ANONYMOUS, Caller, KeyRing, hash_key, new_key
from bridge.api.inbound import parse_request
from bridge.api.lookup import visibility_query
from bridge.api.models import ProcessStatus
from bridge.api.problems import MEDIA_TYPE, Problem, problem_response
from bridge.api.state import topic_map
from bridge.provenance import EventProvenance, PublishedProvenance, parse_record
from bridge.routes import RoutesConfig
from bridge.settings import Settings
from bridge.store.provenance import HANDLING_COLUMNS, batch_of, primary_of


def test_keys_are_configured_hashed_and_map_to_tenants():
    key = new_key()
    assert key.startswith("ktb_") and key != new_key()
    assert hash_key(key).startswith("sha256:") and key not in hash_key(key)
    ring = KeyRing({hash_key(key): "acme", hash_key("other"): "globex"})
    assert ring.tenant_of(key) == "acme"
    assert ring.tenant_of("other") == "globex"
    assert ring.tenant_of("nope") is None
    assert ring.authenticate(f"Bearer {key}") == Caller("acme", True)
    assert ring.authenticate(f"bearer   {key}") == Caller("acme", True)
    for header in (None, "", "Bearer", "Basic abc", f"Token {key}", "Bearer nope"):
        with pytest.raises(Problem) as raised:
            ring.authenticate(header)
        assert raised.value.status == 401
        assert raised.value.headers == {"WWW-Authenticate": "Bearer"}


def test_auth_off_sees_every_tenant():
    assert KeyRing({}, enabled=False).authenticate(None) is ANONYMOUS
    assert ANONYMOUS.may_see("acme") and ANONYMOUS.may_see(None)
    acme = Caller("acme", True)
    assert acme.may_see("acme")
    assert not acme.may_see("globex")
    assert not acme.may_see(None)


def test_settings_take_only_hashed_keys_and_auth_off(monkeypatch):
    with pytest.raises(ValidationError):
        Settings(api_keys={"secret-key": "acme"})
    with pytest.raises(ValidationError):
        Settings(api_keys={hash_key("k"): ""})
    assert Settings(api_keys={hash_key("k"): "acme"}).api_keys == {hash_key("k"): "acme"}
    monkeypatch.setenv("KTB_API_AUTH", "off")
    monkeypatch.setenv("KTB_API_KEYS", json.dumps({hash_key("k"): "acme"}))
    loaded = Settings()
    assert loaded.api_auth is False
    assert loaded.api_keys == {hash_key("k"): "acme"}


STRUCTURED = {"Content-Type": "application/cloudevents+json; charset=utf-8"}


def test_structured_mode():
    body = {
        "specversion": "1.0",
        "id": "e-1",
        "type": "com.example.order.placed",
        "source": "shop",
        "time": "2026-01-02T03:04:05Z",
        "partitionkey": "o-1",
        "tenantid": "acme",
        "region": "eu",
        "priority": 3,
        "data": {"order_id": "o-1"},
    }
    event = parse_request(STRUCTURED["Content-Type"], {}, json.dumps(body).encode())
    assert (event.id, event.type, event.source, event.partitionkey) == (
        "e-1",
        "com.example.order.placed",
        "shop",
        "o-1",
    )
    assert event.time is not None and event.time.year == 2026
    assert event.tenantid == "acme"
    assert event.data == {"order_id": "o-1"}
    assert event.model_extra == {"region": "eu", "priority": 3}
    plain = parse_request("application/json", {}, json.dumps(body).encode())
    assert plain.id == "e-1"


def test_binary_mode():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-2",
        "ce-type": "com.example.payment.confirmed",
        "ce-source": "psp",
        "ce-subject": "a%20b",
        "ce-partitionkey": "o-2",
        "content-type": "application/json",
    }
    event = parse_request("application/json", headers, b'{"order_id": "o-2"}')
    assert (event.id, event.type, event.subject, event.partitionkey) == (
        "e-2",
        "com.example.payment.confirmed",
        "a b",
        "o-2",
    )
    assert event.datacontenttype == "application/json"
    assert event.data == {"order_id": "o-2"}


@pytest.mark.parametrize(
    ("content_type", "headers", "body", "status"),
    [
        ("text/plain", {}, b"{}", 415),
        (None, {}, b"{}", 415),
        ("application/cloudevents-batch+json", {}, b"[]", 415),
        ("application/cloudevents+json", {}, b"{not json", 400),
        ("application/cloudevents+json", {}, b"\xff\xfe", 400),
        ("application/cloudevents+json", {}, b"[1]", 422),
        ("application/cloudevents+json", {}, b'{"type": "t"}', 422),
        ("application/cloudevents+json", {}, b'{"type": "", "data": {}}', 422),
        ("application/cloudevents+json", {}, b'{"type": "t", "data": []}', 422),
        (
            "application/cloudevents+json",
            {},
            b'{"type": "t", "data": {}, "specversion": "0.3"}',
            422,
        ),
        (
            "application/cloudevents+json",
            {},
            b'{"type": "t", "data": {}, "data_base64": "eA=="}',
            422,
        ),
        ("application/cloudevents+json", {}, b'{"type": "t", "data": {}, "Bad-Name": "x"}', 422),
        ("application/cloudevents+json", {}, b'{"type": "t", "data": {}, "ext": {"a": 1}}', 422),
        ("application/cloudevents+json", {}, b'{"type": "t", "data": {}, "time": "soon"}', 422),
        ("application/json", {"ce-specversion": "1.0"}, b"{}", 422),
        ("application/json", {"ce-specversion": "1.0", "ce-type": "t"}, b"nope", 400),
    ],
)
def test_bad_requests_are_problems(content_type, headers, body, status):
    with pytest.raises(Problem) as raised:
        parse_request(content_type, headers, body)
    assert raised.value.status == status


def test_visibility_queries():
    assert visibility_query() == ""
    assert visibility_query(
        workflow_type="OrderFulfillment",
        status=ProcessStatus.CONTINUED_AS_NEW,
        tenant="acme",
        key="o-1",
        event_id="e-1",
    ) == (
        "WorkflowType = 'OrderFulfillment' AND ExecutionStatus = 'ContinuedAsNew' AND "
        "KtbTenantId = 'acme' AND KtbBusinessKey = 'o-1' AND KtbEventId = 'e-1'"
    )
    for bad in ("a'b", 'a"b', "a\\b", "a\nb"):
        with pytest.raises(Problem):
            visibility_query(key=bad)


def _event(event_id: str, outcome: str = "started", **kw) -> bytes:
    fields = dict(
        event_id=event_id,
        event_type="t",
        tenant_id="acme",
        key="k",
        topic="orders",
        partition=0,
        offset=1,
        route="r",
        action="start",
        outcome=outcome,
        workflow_id="wf",
        run_id="run",
        detail=None,
        at="now",
        via="live",
    )
    fields.update(kw)
    return json.dumps(asdict(EventProvenance(**fields))).encode()


def _published(workflow_id: str, ce_id: str, offset: int = 0) -> bytes:
    item = PublishedProvenance(
        ce_id=ce_id,
        type="t",
        topic="out",
        partition=0,
        offset=offset,
        published_kind="outcome",
        workflow_id=workflow_id,
        causation_id="e",
        tenant_id="acme",
        at=NOW,
    )
    return json.dumps(asdict(item)).encode()


NOW = datetime.now(UTC).isoformat()


def test_batches_keep_readable_records_of_the_retention():
    old = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    records = [
        (None, 0, 0),
        (b"not json", 0, 1),
        (b'{"kind": "other"}', 0, 2),
        (_event("", at=NOW), 0, 3),
        (_event("e-1", at="yesterday"), 0, 4),
        (_event("e-1", at=old), 0, 5),
        (_event("e-1", "duplicate", at=NOW, offset=7), 1, 6),
        (_published("wf", "c-1", 5), 2, 7),
    ]
    batch = batch_of(records, retention_days=2)
    assert (batch.records, batch.skipped, batch.rows) == (8, 6, 2)
    assert batch.days == {datetime.now(UTC).date()}
    handling = dict(zip(HANDLING_COLUMNS, (column[0] for column in batch.handlings), strict=True))
    assert handling["event_id"] == "e-1" and handling["outcome"] == "duplicate"
    assert (handling["source_partition"], handling["source_offset"]) == (1, 6)
    assert handling["source_index"] == 0
    assert (handling["offset"], handling["at"]) == (7, datetime.fromisoformat(NOW))
    assert batch.published[5] == ["c-1"] and batch.published[2] == [7]


def test_a_batch_record_gives_each_item_its_index():
    items = [
        json.loads(_event("e-1", at=NOW)),
        "not an item",
        {"kind": "event", "unknown": 1},
        json.loads(_published("wf", "c-1")),
        json.loads(_event("e-2", "duplicate", at=NOW)),
    ]
    value = json.dumps({"kind": "batch", "items": items}).encode()
    batch = batch_of([(value, 2, 40), (_event("e-3", at=NOW), 2, 41)], retention_days=2)
    assert (batch.records, batch.skipped, batch.rows) == (6, 2, 4)
    places = list(zip(batch.handlings[1], batch.handlings[2], batch.handlings[3], strict=True))
    assert batch.handlings[4] == ["e-1", "e-2", "e-3"]
    assert places == [(2, 40, 0), (2, 40, 4), (2, 41, 0)]
    assert (batch.published[2], batch.published[3], batch.published[5]) == ([40], [3], ["c-1"])


def test_primary_is_the_first_handling_that_is_not_a_repeat():
    def handling(outcome: str) -> EventProvenance:
        (item,) = parse_record(_event("e", outcome))
        assert isinstance(item, EventProvenance)
        return item

    repeat, started = handling("duplicate"), handling("started")
    assert primary_of([repeat, started, handling("duplicate")]) is started
    assert primary_of([repeat]) is repeat
    assert primary_of([]) is None


def test_scopes_of_callers():
    assert Caller("acme", True).scope.allows("acme")
    assert not Caller("acme", True).scope.allows("globex")
    assert not Caller("acme", True).scope.allows(None)
    assert ANONYMOUS.scope.allows("globex") and ANONYMOUS.scope.allows(None)


def test_topic_map_prefers_configured_topics():
    config = RoutesConfig.parse(
        {
            "routes": [
                {
                    "name": "a",
                    "topic": "orders",
                    "type": "t.placed",
                    "action": "start",
                    "workflow": "W",
                    "task_queue": "q",
                    "workflow_id": "w-{id}",
                },
                {
                    "name": "b",
                    "topic": "orders2",
                    "type": "t.placed",
                    "action": "start",
                    "workflow": "W",
                    "task_queue": "q",
                    "workflow_id": "w-{id}",
                },
                {
                    "name": "c",
                    "topic": "payments",
                    "type": "t.paid",
                    "action": "signal",
                    "workflow_id": "w-{id}",
                    "signal": "paid",
                },
            ]
        }
    )
    settings = Settings(api_topics={"t.paid": "payments.api", "t.other": "other"})
    assert topic_map(settings, config) == {
        "t.placed": "orders",
        "t.paid": "payments.api",
        "t.other": "other",
    }
    assert topic_map(Settings(), None) == {}


def test_problem_response_shape():
    response = problem_response(None, 404, "not-found", "no event 'x'", event_id="x", skip=None)
    assert response.media_type == MEDIA_TYPE
    assert json.loads(response.body) == {
        "type": "urn:ktb:problem:not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "no event 'x'",
        "event_id": "x",
    }


async def test_body_limit_answers_413_for_declared_and_streamed_bodies():
    inner = FastAPI()

    @inner.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app = BodyLimit(inner, max_bytes=10)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        assert (await http.post("/echo", content=b"x" * 10)).json() == {"size": 10}
        too_big = await http.post("/echo", content=b"x" * 11)
        assert too_big.status_code == 413
        assert too_big.headers["content-type"] == MEDIA_TYPE
        assert too_big.json()["instance"] == "/echo"

        async def chunks():
            for _ in range(3):
                yield b"x" * 5

        assert (await http.post("/echo", content=chunks())).status_code == 413


def test_api_key_command_prints_a_key_and_its_hash():
    from typer.testing import CliRunner

    from bridge.cli.main import app

    result = CliRunner().invoke(app, ["api-key", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    key_line, entry_line = result.output.strip().splitlines()
    key = key_line.removeprefix("key: ")
    entry = json.loads(entry_line.removeprefix("KTB_API_KEYS entry: "))
    assert entry == {hash_key(key): "acme"}
    assert KeyRing(entry).tenant_of(key) == "acme"
    assert Settings(api_keys=entry).api_keys == entry


@pytest.mark.parametrize("tenant", ["a:b", "a b", "", "x" * 65])
def test_api_keys_map_to_well_formed_tenants(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        Settings(api_keys={hash_key("k"): tenant})


def test_page_tokens_carry_the_place_in_a_record_and_older_tokens_still_page():
    at = datetime.now(UTC)
    cursor = (at, 2, 40, 3)
    assert event_view._cursor(event_view._token(cursor)) == cursor
    older = lookup.encode_page_token(json.dumps([at.isoformat(), 2, 40]).encode())
    assert event_view._cursor(older) == (at, 2, 40, 0)
    for bad in ([at.isoformat(), 2], [at.isoformat(), 2, 40, 1, 5], "x"):
        with pytest.raises(Problem):
            event_view._cursor(lookup.encode_page_token(json.dumps(bad).encode()))
