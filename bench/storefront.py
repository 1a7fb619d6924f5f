"""Dashboard latency of the storefront BFF: a cache hit against a miss, in memory and in Redis.

The services run as their own processes, as ``ktb dev`` runs them: the orders,
inventory, payments and shipping workers, the orders, payments and shipping HTTP
servers, ``ktb api`` (authentication off, no database: listing processes needs only
Temporal) and the storefront, once with its cache in memory and, when
``redis-server`` is installed, once more with ``KTB_CACHE_URL`` on a Redis of the
run's own. Each customer gets ``orders`` completed ``OrderFulfillment`` runs (started
directly, with the ``CustomerId`` search attribute the start route would set); then
every customer's dashboard is asked for once (a miss: five parts over HTTP and
Temporal visibility) and ``hits`` times more (served from the cache), one request
at a time. Latency is the client's, request sent to answer read; each answer's
``Cache-Status`` says which kind it was. ``GET /healthz`` of the same storefront, asked
as often, is the floor: what any answer costs on the machine.

    .venv/bin/python -m bench --quick --scenario storefront
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from bench.common import BenchContext, Row, ScenarioResult, fmt, percentile, rounded, stack_env
from bench.saga import SERVICES, Processes, saga_memo
from bridge.dev.redis import redis_executable, redis_server
from bridge.dev.stack import free_port
from bridge.kafka import ensure_topics
from bridge.temporal.attributes import BUSINESS_KEY

NAME = "storefront"
CUSTOMER = SearchAttributeKey.for_keyword("CustomerId")
SERVERS = ("orders", "payments", "shipping")


def order(order_id: str, customer_id: str) -> dict[str, Any]:
    """A ``tok_visa`` order of ``customer_id``."""
    return {
        "order_id": order_id,
        "customer_id": customer_id,
        "items": [{"sku": "sku-bench", "quantity": 1, "unit_price_cents": 1999}],
        "total_cents": 1999,
        "currency": "EUR",
        "payment_token": "tok_visa",
    }


async def answering(url: str, procs: Processes, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200 (every process still alive meanwhile)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            procs.check()
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def dashboards(url: str, customers: list[str], hits: int) -> dict[str, list[float]]:
    """Ask for each customer's dashboard ``1 + hits`` times; latencies (ms) by cache outcome,
    and of as many ``GET /healthz`` (the floor: the same client, server and machine, no work)."""
    found: dict[str, list[float]] = {"hit": [], "miss": [], "healthz": []}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(len(customers) * (1 + hits)):
            t0 = time.perf_counter()
            (await http.get("/healthz")).raise_for_status()
            found["healthz"].append((time.perf_counter() - t0) * 1000)
        for customer in customers:
            for _ in range(1 + hits):
                t0 = time.perf_counter()
                answer = await http.get(f"/customers/{customer}/dashboard")
                elapsed = (time.perf_counter() - t0) * 1000
                if answer.status_code != 200 or answer.json()["partial"]:
                    raise SystemExit(f"dashboard of {customer}: {answer.status_code} {answer.text}")
                status = answer.headers["cache-status"]
                found["hit" if "; hit" in status else "miss"].append(elapsed)
    return found


def summary(latencies: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of latencies in ms."""
    return {
        "count": len(latencies),
        "p50_ms": rounded(percentile(latencies, 50), 2),
        "p99_ms": rounded(percentile(latencies, 99), 2),
        "max_ms": rounded(max(latencies), 2),
    }


async def measure(ctx: BenchContext, customers: int, orders: int, hits: int) -> dict[str, Any]:
    """Seed the runs, start the processes, ask for the dashboards; the figures per backend."""
    run = uuid.uuid4().hex[:8]
    workdir = ctx.work_dir / f"storefront-{run}"
    workdir.mkdir(parents=True)
    settings = ctx.settings
    topics = {"outcomes": f"bench-outcomes-{run}", "compensations": f"bench-compensations-{run}"}
    queues = {name: f"bench-{name}-{run}" for name in SERVICES}
    await ensure_topics(settings, {t: 3 for t in topics.values()})
    ports = {name: free_port() for name in (*SERVERS, "api", "storefront", "storefront_redis")}
    env = stack_env(
        settings,
        KTB_DATA_DIR=str(workdir / "data"),
        KTB_LOG_LEVEL="WARNING",
        KTB_API_AUTH="off",
        KTB_API_INDEXER="off",
        KTB_API_PORT=str(ports["api"]),
        KTB_SERVICES_OUTCOME_TOPIC=topics["outcomes"],
        KTB_SERVICES_COMPENSATION_TOPIC=topics["compensations"],
        KTB_SERVICES_STOREFRONT_CACHE_TTL_S="600",
        **{f"KTB_SERVICES_{name.upper()}_QUEUE": queue for name, queue in queues.items()},
        **{f"KTB_SERVICES_{name.upper()}_PORT": str(ports[name]) for name in SERVERS},
    )
    procs = Processes(settings, workdir, env)
    figures: dict[str, Any] = {"customers": customers, "orders_per_customer": orders, "hits": hits}
    try:
        for name in SERVICES:
            procs.start(f"{name}-worker", ["-m", f"services.{name}", "worker"])
        for name in SERVERS:
            procs.start(f"{name}-server", ["-m", f"services.{name}", "server"])
        procs.start("api", ["-m", "bridge", "api"])
        ids = [f"c-{run}-{n}" for n in range(customers)]
        handles = [
            await ctx.client.start_workflow(
                "OrderFulfillment", order(f"{customer}-{j}", customer),
                id=f"order-{customer}-{j}", task_queue=queues["orders"],
                memo=saga_memo(topics, queues),
                search_attributes=TypedSearchAttributes([
                    SearchAttributePair(CUSTOMER, customer),
                    SearchAttributePair(BUSINESS_KEY, f"{customer}-{j}"),
                ]),
            )
            for customer in ids
            for j in range(orders)
        ]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 300)
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(redis_server(workdir)) if redis_executable() else None
            backends = {"memory": None, "redis": redis_url} if redis_url else {"memory": None}
            for backend, url in backends.items():
                port = ports["storefront" if url is None else "storefront_redis"]
                extra = {"KTB_SERVICES_STOREFRONT_PORT": str(port)}
                if url is not None:
                    extra["KTB_CACHE_URL"] = url
                procs.env = {**env, **extra}
                procs.start(f"storefront-{backend}", ["-m", "services.storefront", "server"])
                base = f"http://127.0.0.1:{port}"
                # Ready: its invalidation consumer is live, so it caches.
                await answering(f"{base}/readyz", procs)
                # Every process loaded and warm: one customer's dashboard, then the rest.
                await dashboards(base, ids[:1], 1)
                found = await dashboards(base, ids[1:], hits)
                figures[backend] = {kind: summary(values) for kind, values in found.items()}
        if "redis" not in figures:
            figures["redis"] = "skipped: redis-server is not installed"
    finally:
        procs.stop()
    return figures


async def run(ctx: BenchContext) -> ScenarioResult:
    """The ``storefront`` scenario of ``python -m bench``."""
    figures = await measure(
        ctx, customers=ctx.size(41, 201), orders=ctx.size(2, 3), hits=ctx.size(5, 10)
    )
    rows = []
    for backend in ("memory", "redis"):
        found = figures[backend]
        if not isinstance(found, dict):
            continue
        hit, miss, floor = found["hit"], found["miss"], found["healthz"]
        rows += [
            Row(f"{backend} cache: dashboard p50, hit vs miss ({miss['count']} customers)",
                fmt(hit["p50_ms"], "ms", 2), f"{fmt(miss['p50_ms'], 'ms', 2)} (miss)",
                fmt(miss["p50_ms"] / hit["p50_ms"], "x", 1)),
            Row(f"{backend} cache: dashboard p99, hit vs miss ({hit['count']} hits)",
                fmt(hit["p99_ms"], "ms", 2), f"{fmt(miss['p99_ms'], 'ms', 2)} (miss)",
                fmt(miss["p99_ms"] / hit["p99_ms"], "x", 1)),
            Row(f"{backend} cache: hit p50 / p99 against GET /healthz of the same process",
                f"{fmt(hit['p50_ms'], 'ms', 2)} / {fmt(hit['p99_ms'], 'ms', 2)}",
                f"{fmt(floor['p50_ms'], 'ms', 2)} / {fmt(floor['p99_ms'], 'ms', 2)} (healthz)"),
        ]  # fmt: skip
    notes = [
        f"{figures['customers']} customers x {figures['orders_per_customer']} completed orders; "
        "a miss joins 5 parts (API listing via Temporal visibility, 3 read models over HTTP)"
    ]
    if isinstance(figures["redis"], str):
        notes.append(figures["redis"])
    return ScenarioResult(NAME, figures, rows, notes)
