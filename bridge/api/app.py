"""The FastAPI application: ``create_app(settings)``.

Clients are built in the lifespan, never at import or in ``create_app``. Every
area is an ``APIRouter``; ``ROUTERS`` is the one list of them, and
``create_app(..., routers=[...])`` adds more.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.api import (
    console,
    dlq,
    docs,
    event_view,
    events,
    health,
    overview,
    policies,
    problems,
    processes,
    replays,
    session,
)
from bridge.api.models import StructuredEvent
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import Telemetry
from bridge.settings import Settings

ROUTERS: list[APIRouter] = [
    health.router,
    events.router,
    event_view.router,
    processes.router,
    replays.router,
    dlq.router,
    policies.router,
    overview.router,
    session.router,
]
"""The API's areas, in OpenAPI order."""

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
DESCRIPTION = """\
Produce CloudEvents onto Kafka, look up what the bridge did with an event, and
follow the Temporal processes events start.

Authentication: `Authorization: Bearer <API key>`; each key belongs to one tenant,
which sees only its own events and processes (another tenant's are 404). The
console (`/console`) signs in once with a key (`POST /session`) and then sends a
session cookie, with `X-CSRF-Token` on state-changing requests. Errors are
`application/problem+json` (RFC 9457).
"""


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    routers: Sequence[APIRouter] = (),
    telemetry: Telemetry | None = None,
) -> FastAPI:
    """The API app; its clients connect when the app starts (lifespan), not here.

    ``telemetry`` (``ktb api``) supplies the registry ``/metrics`` serves, with the
    Temporal SDK's metrics in it, and tracing.
    """
    metrics = telemetry.metrics if telemetry is not None else metrics or Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from bridge.wiring import open_api_state

        async with open_api_state(settings, metrics, telemetry) as state:
            app.state.ktb = state
            yield

    app = FastAPI(
        title="ktb",
        summary="Kafka <-> Temporal bridge HTTP API",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # Served by docs.install from a package's files: FastAPI's own load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    for router in (*ROUTERS, *routers):
        app.include_router(router)
    docs.install(app)
    console.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        # Referenced from hand-written response and request entries, so added here.
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (problems.ProblemDetails, StructuredEvent):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        # BodyLimit answers 413 on every route that takes a body, whichever router it is in.
        too_large = problems.responses(413)[413]
        for operations in schema.get("paths", {}).values():
            for method, operation in operations.items():
                if method.upper() in BODY_METHODS:
                    operation.setdefault("responses", {}).setdefault("413", too_large)
        app.openapi_schema = schema
    return app.openapi_schema


class BodyLimit:
    """Answers 413 (problem) to request bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        # Read the body up front (it is small by definition) and replay it to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem_response(
            None,
            413,
            "content-too-large",
            f"the request body is larger than {self.max_bytes} bytes",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


class RequestMetrics:
    """Counts requests and their duration by route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.api_requests.labels(method, template, str(status)).inc()
            self.metrics.api_request_duration.labels(method, template).observe(
                time.perf_counter() - started
            )
