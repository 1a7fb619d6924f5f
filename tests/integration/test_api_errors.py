"""Every error of the HTTP API is an RFC 9457 problem document with a 4xx status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest_asyncio

from bridge.api.auth import hash_key
from bridge.api.problems import MEDIA_TYPE
from bridge.settings import Settings
from tests.support import eventually, order_data, running_api

KEY = "errors-key"
CE_JSON = {"Content-Type": "application/cloudevents+json"}
UNQUERYABLE = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "'", '"', "\\", "a\x00b", "k" * 2000]
"""Values Temporal's visibility query language cannot carry (or over-long ones)."""
SERVER_TEXT = ("SQL", "operation failed", "unrecognized token", "Temporal rejected")


@pytest_asyncio.fixture
async def http(settings: Settings, topics: dict[str, str], uid: str) -> AsyncIterator[Any]:
    """An API with authentication on, small bodies and placed events mapped to a test topic."""
    s = settings.model_copy(
        update={
            "provenance_topic": f"ktb.provenance-{uid}",
            "api_auth": True,
            "api_keys": {hash_key(KEY): f"t-{uid}"},
            "api_max_body_bytes": 2048,
            "api_topics": {"com.example.order.placed": topics["orders"]},
            "routes_file": settings.routes_file.parent / f"no-routes-{uid}.yaml",
        }
    )
    async with (
        running_api(s) as url,
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        ) as client,
    ):
        yield client


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    """The response is a problem document with ``status`` (and type ``kind``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"].startswith("urn:ktb:problem:")
    if kind is not None:
        assert body["type"] == f"urn:ktb:problem:{kind}"
    return body


def event(**overrides: Any) -> bytes:
    """A valid structured order.placed event, with ``overrides`` applied."""
    body = {
        "specversion": "1.0",
        "type": "com.example.order.placed",
        "source": "tests",
        "data": order_data("o-err"),
    }
    body.update(overrides)
    return json.dumps(body).encode()


async def test_event_errors_are_problems(http):
    assert_problem(
        await http.post("/events", content=b"{nope", headers=CE_JSON), 400, "malformed-json"
    )
    body = assert_problem(
        await http.post("/events", content=event(type="com.example.nope"), headers=CE_JSON),
        422,
        "unknown-event-type",
    )
    assert "com.example.order.placed" in body["known_types"]
    unmapped = event(
        type="com.example.order.failed", data={"order_id": "o", "step": "s", "reason": "r"}
    )
    assert_problem(
        await http.post("/events", content=unmapped, headers=CE_JSON), 422, "unmapped-event-type"
    )
    wrong = order_data("o-err") | {"total_cents": "lots"}
    body = assert_problem(
        await http.post("/events", content=event(data=wrong), headers=CE_JSON),
        422,
        "schema-mismatch",
    )
    assert body["field"] == "total_cents"
    missing = {k: v for k, v in order_data("o-err").items() if k != "currency"}
    body = assert_problem(
        await http.post("/events", content=event(data=missing), headers=CE_JSON),
        422,
        "schema-mismatch",
    )
    assert body["field"] == "currency"
    no_type = json.dumps({"specversion": "1.0", "data": {}}).encode()
    body = assert_problem(await http.post("/events", content=no_type, headers=CE_JSON), 422)
    assert body["errors"][0]["loc"] == ["body", "type"]
    assert_problem(
        await http.post("/events", content=event(specversion="0.3"), headers=CE_JSON), 422
    )
    assert_problem(await http.post("/events", content=event(bad_name="x"), headers=CE_JSON), 422)
    assert_problem(await http.post("/events", content=b"[]", headers=CE_JSON), 422)
    assert_problem(
        await http.post("/events", content=b"x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    assert_problem(
        await http.post("/events", content=b"x" * 4096, headers=CE_JSON), 413, "content-too-large"
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 1024

    # Chunked, so no Content-Length announces the size.
    assert_problem(await http.post("/events", content=chunks(), headers=CE_JSON), 413)
    binary = await http.post(
        "/events",
        json=order_data("o-err"),
        headers={
            "ce-specversion": "1.0",
            "ce-type": "com.example.order.placed",
            "ce-time": "yesterday",
        },
    )
    assert_problem(binary, 422)
    assert_problem(await http.post("/events?wait=-1", content=event(), headers=CE_JSON), 422)


async def test_other_errors_are_problems(http):
    assert_problem(await http.get("/events/unknown-id"), 404, "not-found")
    assert_problem(await http.get("/processes/unknown-workflow"), 404, "not-found")
    assert_problem(await http.get("/processes/unknown-workflow/stream"), 404, "not-found")
    assert_problem(await http.get("/processes", params={"page_size": 0}), 422)
    assert_problem(await http.get("/processes", params={"status": "sleeping"}), 422)
    assert_problem(await http.get("/processes", params={"key": "a'b"}), 422)
    assert_problem(await http.get("/processes", params={"page_token": "%%%"}), 422)
    assert_problem(await http.get("/no-such-route"), 404)
    assert_problem(await http.delete("/events/x"), 405)
    body = assert_problem(await http.get("/processes", headers={"Authorization": ""}), 401)
    assert "Bearer" in body["detail"]
    assert_problem(await http.get("/processes", headers={"Authorization": "Basic eA=="}), 401)
    assert (await http.get("/healthz", headers={"Authorization": ""})).json() == {"status": "ok"}

    async def ready() -> dict:
        response = await http.get("/readyz")
        assert response.status_code == 200, response.text
        return response.json()

    assert (await eventually(ready))["checks"] == {
        "kafka": "ok",
        "temporal": "ok",
        "database": "ok",
        "provenance_index": "ok",
    }


async def test_openapi_documents_every_route_and_error(http):
    doc = (await http.get("/openapi.json")).json()
    assert "ProblemDetails" in doc["components"]["schemas"]
    assert "StructuredEvent" in doc["components"]["schemas"]
    expected = {
        ("post", "/events"),
        ("get", "/events"),
        ("get", "/events/{event_id}"),
        ("get", "/processes"),
        ("get", "/processes/{workflow_id}"),
        ("get", "/processes/{workflow_id}/stream"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    }
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= found
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
            for code, response in errors.items():
                assert list(response["content"]) == [MEDIA_TYPE], (method, path, code)
            if method in ("post", "put", "patch"):
                assert "413" in errors, (method, path)
            if path.startswith(("/events", "/processes")):
                assert "401" in errors, (method, path)
                assert "422" in errors, (method, path)


def assert_no_server_text(response: httpx.Response) -> None:
    """The answer carries none of a Temporal server's own error text."""
    for text in SERVER_TEXT:
        assert text not in response.text, response.text


async def test_values_temporal_cannot_query_are_refused_at_the_edge(http):
    # Found by schemathesis: a NUL reached the visibility store's SQL and came back
    # as "503 temporal-unavailable" with the store's error text.
    for value in UNQUERYABLE:
        for params in (
            {"status": "running", "key": value},
            {"key": value},
            {"type": value},
            {"tenant": value},
        ):
            response = await http.get("/processes", params=params)
            assert_problem(response, 422, "validation-error")
            assert_no_server_text(response)
        escaped = quote(value, safe="")
        for path in (f"/events/{escaped}", f"/processes/{escaped}", f"/processes/{escaped}/stream"):
            response = await http.get(path)
            assert_problem(response, 422, "validation-error")
            assert_no_server_text(response)
    # An event id the API could not look up is not accepted either.
    response = await http.post("/events", content=event(id="evt\x00"), headers=CE_JSON)
    assert_problem(response, 422)
    # Fine values still reach Temporal and answer as before.
    listing = await http.get("/processes", params={"status": "running", "key": "o-\u00e9 x%_"})
    assert listing.status_code == 200, listing.text
    assert_problem(await http.get("/events/" + quote("evt-\u00e9 1", safe="")), 404)


async def test_a_page_token_the_api_did_not_issue_is_a_422_not_an_outage(http):
    # Temporal answers UNKNOWN ("please retry") to a token it cannot read.
    for token in ("AAAA", "Z2FyYmFnZQ=="):
        response = await http.get("/processes", params={"page_token": token})
        assert_problem(response, 422, "validation-error")
        assert_no_server_text(response)
