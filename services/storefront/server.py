"""``python -m services.storefront server``: the storefront's HTTP API, and the outcome-topic
consumer that evicts its cache.

- ``GET /customers/{customer_id}/dashboard``: the customer's dashboard, cached; every
  answer has a ``Cache-Status`` header (RFC 9211): ``storefront; hit; ttl=N`` or
  ``storefront; fwd=miss`` (``stored`` when the answer was cached, ``collapsed`` when
  it came from a fetch another request started). A partial dashboard is never cached.
- ``POST /customers/{customer_id}/orders``: ``order.placed`` through the bridge's
  ``POST /events``; ``202`` with the operation id, its status and progress URLs and
  an estimated duration.
- ``GET /operations/{operation_id}`` and ``.../progress``: the event's status and its
  process's progress, read through the API with the storefront's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Path
from fastapi.responses import JSONResponse, Response

from bridge import ConfigError, Event, SchemaCatalog, Settings
from services import common
from services.config import ServicesConfig
from services.orders import COMPENSATED, COMPLETED, FAILED
from services.storefront import (
    CUSTOMER_PATTERN,
    PLACED,
    OrderAccepted,
    OrderRequest,
)
from services.storefront.cache import Cache, CacheStatus, CacheUnavailable, open_cache
from services.storefront.dashboard import RUNNING, Aggregator, PartError, Upstreams
from services.storefront.estimate import RunningMedian

log = logging.getLogger("services.storefront")

OUTCOMES = frozenset({COMPLETED, FAILED, COMPENSATED})
ESTIMATE_MAX_AGE_S = 60.0
"""How often at most the estimate lists recent runs again (dashboards feed it meanwhile)."""
EVICT_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to evict while the cache does not answer (the last repeats)."""
CustomerId = Annotated[str, Path(pattern=CUSTOMER_PATTERN)]


@dataclass
class Storefront:
    """The storefront's behaviour, over its upstreams and its cache."""

    config: ServicesConfig
    upstreams: Upstreams
    cache: Cache
    aggregator: Aggregator
    key_prefix: str
    live: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the invalidation consumer sees every outcome event: nothing is stored
    before, since an eviction could pass it by."""
    _inflight: dict[str, asyncio.Task[tuple[bytes, bool]]] = field(default_factory=dict)

    def cache_key(self, customer_id: str) -> str:
        """The cache key of a customer's dashboard."""
        return f"{self.key_prefix}:{customer_id}"

    async def dashboard(self, customer_id: str) -> tuple[bytes, CacheStatus]:
        """The dashboard's JSON and what the cache did; concurrent misses share one fetch."""
        key = self.cache_key(customer_id)
        try:
            cached = await self.cache.get(key)
        except CacheUnavailable as exc:
            log.warning("cache unavailable, computing the dashboard: %s", exc)
            body, _ = await self._fetch(key, customer_id, None)
            return body, CacheStatus(hit=False, detail="cache unavailable")
        if cached is not None:
            return cached.body, CacheStatus(hit=True, ttl_s=cached.ttl_s)
        leader = self._inflight.get(key)
        if leader is not None:
            body, _ = await asyncio.shield(leader)
            return body, CacheStatus(hit=False, collapsed=True)
        task = asyncio.create_task(self._fetch_at_generation(key, customer_id))
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        body, stored = await asyncio.shield(task)
        return body, CacheStatus(
            hit=False, stored=stored, ttl_s=self.config.storefront_cache_ttl_s if stored else None
        )

    def _forget(self, key: str, task: asyncio.Task[tuple[bytes, bool]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch_at_generation(self, key: str, customer_id: str) -> tuple[bytes, bool]:
        try:
            generation = await self.cache.generation(key)
        except CacheUnavailable as exc:
            log.warning("cache unavailable, the dashboard is not stored: %s", exc)
            generation = None
        return await self._fetch(key, customer_id, generation)

    async def _fetch(
        self, key: str, customer_id: str, generation: int | None
    ) -> tuple[bytes, bool]:
        """Build the dashboard; store it (at ``generation``) if it is whole and settled.

        A partial dashboard is not stored, nor one with an order in flight: its progress
        changes without an event, and its outcome event comes before its process closes
        and its read model settles, so an entry stored in between would outlive the
        eviction. Stored entries only change when an order starts (its placement here
        evicts) or ends (its outcome event evicts).
        """
        dashboard = await self.aggregator.build(customer_id)
        body = dashboard.model_dump_json().encode()
        in_flight = any(order.process_status == RUNNING for order in dashboard.orders)
        if dashboard.partial or in_flight or generation is None or not self.live.is_set():
            return body, False
        try:
            stored = await self.cache.put(key, body, self.config.storefront_cache_ttl_s, generation)
        except CacheUnavailable as exc:
            log.warning("cache unavailable, the dashboard is not stored: %s", exc)
            stored = False
        return body, stored

    async def evict(self, customer_id: str) -> None:
        """Evict a customer's dashboard, retrying while the cache does not answer: an
        outcome event is only done with once its customer's entry is gone."""
        key = self.cache_key(customer_id)
        # A request from now on must not join a fetch that may have read the old state.
        self._inflight.pop(key, None)
        attempt = 0
        while True:
            try:
                await self.cache.evict(key)
                return
            except CacheUnavailable as exc:
                wait = EVICT_RETRY_S[min(attempt, len(EVICT_RETRY_S) - 1)]
                log.warning("cannot evict %s yet, retrying in %.1fs: %s", customer_id, wait, exc)
                await asyncio.sleep(wait)
                attempt += 1

    async def on_outcomes(self, events: Sequence[Event]) -> None:
        """The outcome topic's events: evict the customer of every order that ended."""
        customers = {
            e.data["customer_id"]
            for e in events
            if e.type in OUTCOMES and isinstance(e.data.get("customer_id"), str)
        }
        for customer_id in customers:
            await self.evict(customer_id)
        if customers:
            log.info("evicted the dashboards of %d customer(s)", len(customers))

    async def place(self, customer_id: str, request: OrderRequest) -> Response:
        """Produce the order's ``order.placed`` through the API; 202 with where to follow it."""
        order_id = request.order_id or uuid.uuid4().hex
        data = {
            "order_id": order_id,
            "customer_id": customer_id,
            "items": [item.model_dump() for item in request.items],
            "total_cents": sum(i.quantity * i.unit_price_cents for i in request.items),
            "currency": request.currency,
            "payment_token": request.payment_token,
        }
        event = {
            "specversion": "1.0",
            # One id per order: placing the same order again is a duplicate, not a second one.
            "id": f"storefront-{order_id}",
            "type": PLACED,
            "source": "storefront",
            "partitionkey": order_id,
            "data": data,
        }
        try:
            answer = await self.upstreams.api.post(
                "/events", json=event, headers={"content-type": "application/cloudevents+json"}
            )
        except httpx.TransportError as exc:
            return _problem(503, f"the bridge's API is unreachable ({type(exc).__name__})")
        if answer.status_code >= 300:
            # The API's problem (a 422 of the order's data, a 409, a 503) is the caller's answer.
            return Response(
                answer.content,
                status_code=answer.status_code,
                media_type=answer.headers.get("content-type"),
            )
        accepted = answer.json()
        await self.evict(customer_id)
        estimate = await self.estimate()
        operation = quote(accepted["operation_id"], safe="")
        body = OrderAccepted(
            operation_id=accepted["operation_id"],
            order_id=order_id,
            workflow_id=accepted.get("workflow_id"),
            duplicate=bool(accepted.get("duplicate")),
            status_url=f"/operations/{operation}",
            progress_url=f"/operations/{operation}/progress",
            estimated_duration_s=estimate.median_s(),
            estimate_runs=estimate.runs,
        )
        return JSONResponse(
            body.model_dump(mode="json"), status_code=202, headers={"Location": body.status_url}
        )

    async def estimate(self) -> RunningMedian:
        """The running median of recent runs, listed again when it is older than a minute
        (within a part's deadline: a slow API leaves the estimate as it was)."""
        durations = self.aggregator.durations
        if durations.stale(ESTIMATE_MAX_AGE_S):
            try:
                page = await asyncio.wait_for(
                    self.upstreams.api_json(
                        "/processes",
                        {
                            "type": self.config.storefront_workflow_type,
                            "status": "completed",
                            "page_size": self.config.storefront_estimate_runs,
                        },
                    ),
                    self.config.storefront_part_timeout_s,
                )
            except (TimeoutError, PartError) as exc:
                log.warning("recent runs not listed, the estimate stays as it was: %s", exc)
            else:
                self.aggregator.feed(page.get("items", []) if isinstance(page, dict) else [])
                durations.refreshed()
        return durations

    async def operation(self, operation_id: str) -> Response:
        """The event's status as the API reports it to the storefront's key."""
        return await self._relay("/events/" + quote(operation_id, safe=""))

    async def progress(self, operation_id: str) -> Response:
        """The process of an operation: status and progress (the API's view, trimmed)."""
        try:
            event = await self.upstreams.api.get("/events/" + quote(operation_id, safe=""))
        except httpx.TransportError as exc:
            return _problem(503, f"the bridge's API is unreachable ({type(exc).__name__})")
        if event.status_code >= 300:
            return _relayed(event)
        workflow_id = event.json().get("workflow_id")
        if not workflow_id:
            return JSONResponse(
                {"operation_id": operation_id, "workflow_id": None, "status": "pending"}
            )
        answer = await self._get("/processes/" + quote(workflow_id, safe=":"))
        if isinstance(answer, Response):
            return answer
        view = answer.json()
        return JSONResponse(
            {
                "operation_id": operation_id,
                "workflow_id": workflow_id,
                "status": view.get("status"),
                "progress": view.get("progress"),
                "result": view.get("result"),
                "failure": view.get("failure"),
                "estimated_duration_s": self.aggregator.durations.median_s(),
            }
        )

    async def _get(self, path: str) -> httpx.Response | Response:
        try:
            answer = await self.upstreams.api.get(path)
        except httpx.TransportError as exc:
            return _problem(503, f"the bridge's API is unreachable ({type(exc).__name__})")
        return answer if answer.status_code < 300 else _relayed(answer)

    async def _relay(self, path: str) -> Response:
        answer = await self._get(path)
        return answer if isinstance(answer, Response) else _relayed(answer)


def _relayed(answer: httpx.Response) -> Response:
    return Response(
        answer.content,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type"),
    )


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": "unavailable", "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def create_app(storefront: Storefront) -> FastAPI:
    """The storefront's HTTP API."""
    app = common.app("storefront")

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready once its cache invalidation consumes the outcome topic (it caches from then)."""
        if storefront.live.is_set():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting: invalidation not live yet"}, status_code=503)

    @app.get("/customers/{customer_id}/dashboard")
    async def dashboard(customer_id: CustomerId) -> Response:
        """The customer's orders with their processes, payments and shipments; cached."""
        body, status = await storefront.dashboard(customer_id)
        return Response(
            body, media_type="application/json", headers={"Cache-Status": status.header()}
        )

    @app.post("/customers/{customer_id}/orders", status_code=202)
    async def place_order(customer_id: CustomerId, order: OrderRequest) -> Response:
        """Place an order: produced through the bridge; follow it at the answer's URLs."""
        return await storefront.place(customer_id, order)

    @app.get("/operations/{operation_id}")
    async def operation(operation_id: str) -> Response:
        """Where a placed order's event stands (the API's ``GET /events/{id}``)."""
        return await storefront.operation(operation_id)

    @app.get("/operations/{operation_id}/progress")
    async def progress(operation_id: str) -> Response:
        """The placed order's process: status, progress, result."""
        return await storefront.progress(operation_id)

    return app


def key_prefix(config: ServicesConfig) -> str:
    """Cache keys of one identity: storefronts with different API keys (tenants) that
    share a Redis never see each other's dashboards."""
    key = config.storefront_api_key
    who = hashlib.sha256(key.get_secret_value().encode()).hexdigest()[:16] if key else "open"
    return f"ktb:storefront:{who}"


@contextlib.asynccontextmanager
async def open_storefront(settings: Settings, config: ServicesConfig) -> AsyncIterator[Storefront]:
    """The storefront over its upstreams and cache, closed on exit.

    With authentication on, it calls the API with its own key
    (``KTB_SERVICES_STOREFRONT_API_KEY``) and so serves that key's tenant only.
    """
    key = config.storefront_api_key
    if settings.api_auth and key is None:
        raise ConfigError(
            "KTB_API_AUTH is on: set KTB_SERVICES_STOREFRONT_API_KEY, the storefront's own key"
        )
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    timeout = httpx.Timeout(config.storefront_part_timeout_s + 1.0)
    upstreams = Upstreams(
        api=httpx.AsyncClient(base_url=config.api_url(settings), headers=headers, timeout=timeout),
        services=httpx.AsyncClient(timeout=timeout),
        urls={s: config.url(s, settings) for s in ("orders", "payments", "shipping")},
    )
    cache = open_cache(config.cache_url, config.storefront_cache_ttl_s)
    aggregator = Aggregator(
        upstreams,
        config.storefront_workflow_type,
        config.storefront_customer_attribute,
        config.storefront_part_timeout_s,
        RunningMedian(config.storefront_estimate_runs),
        scoped=settings.api_auth,
    )
    try:
        yield Storefront(config, upstreams, cache, aggregator, key_prefix(config))
    finally:
        await cache.aclose()
        await upstreams.aclose()


async def run_invalidation(
    settings: Settings, config: ServicesConfig, storefront: Storefront, stop: asyncio.Event
) -> None:
    """Consume the outcome topic and evict the customers whose orders ended.

    A cache in memory is this process's own: every replica reads every event (a
    group of its own) from now on. A shared Redis cache is evicted once per event:
    the replicas share one group, which resumes where it stopped.
    """
    shared = config.cache_url is not None
    group = config.storefront_group if shared else f"{config.storefront_group}-{uuid.uuid4().hex}"
    await common.consume_events(
        settings,
        SchemaCatalog.from_dir(settings.schemas_dir),
        [config.outcome_topic],
        group,
        storefront.on_outcomes,
        stop,
        from_latest=True,
        live=storefront.live,
    )


async def main(settings: Settings) -> None:
    """Serve and evict until SIGTERM."""
    config = ServicesConfig()
    async with open_storefront(settings, config) as storefront:
        stop = asyncio.Event()
        consumer = asyncio.create_task(run_invalidation(settings, config, storefront, stop))
        server = asyncio.create_task(
            common.serve(create_app(storefront), config.host, config.port("storefront", settings))
        )
        try:
            await asyncio.wait({consumer, server}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Without its invalidation the cache would serve stale dashboards: a consumer
            # that ended stops the server too (and its error ends the process).
            stop.set()
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
            await consumer
