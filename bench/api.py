"""HTTP API figures: POST /events rate, GET /events latency.

Runs against the Kafka, Temporal and PostgreSQL named by ``KTB_KAFKA_BOOTSTRAP``,
``KTB_TEMPORAL_ADDRESS`` and ``KTB_DATABASE_URL``, on unique topics; the API runs as
its own ``ktb api`` process on a free port (authentication on, one key). The
provenance read model has its own scenario (``make bench SCENARIO=provenance``)::

    KTB_KAFKA_BOOTSTRAP=localhost:19092 KTB_TEMPORAL_ADDRESS=localhost:17233 \\
        KTB_DATABASE_URL=postgresql://postgres@127.0.0.1:15432/ktb \\
        .venv/bin/python -m bench.api --events 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import httpx

from bench.common import cpu_seconds, provenance_topic
from bridge.api import hash_key
from bridge.dev.stack import free_port
from bridge.kafka import ensure_topics
from bridge.settings import Settings

KEY = "bench-key"


def order(order_id: str) -> dict[str, Any]:
    """A valid order.placed payload."""
    return {
        "order_id": order_id,
        "customer_id": "c-1",
        "items": [{"sku": "s-1", "quantity": 1, "unit_price_cents": 100}],
        "total_cents": 100,
        "currency": "EUR",
        "payment_token": "tok_visa",
    }


async def wait_ready(url: str) -> None:
    """Return once the API answers /readyz with 200."""
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready")
            await asyncio.sleep(0.1)


async def main(events: int, concurrency: int) -> dict[str, Any]:
    """Run the measurements; return the figures."""
    uid = uuid.uuid4().hex[:8]
    topic = f"bench-api-{uid}"
    settings = Settings(
        provenance_topic=provenance_topic(uid),
        api_keys={hash_key(KEY): "bench"},
        api_topics={"com.example.order.placed": topic},
        routes_file=Settings().data_dir / f"no-routes-{uid}.yaml",
    )
    await ensure_topics(settings, {topic: 3})
    port = free_port()
    env = dict(
        os.environ,
        KTB_PROVENANCE_TOPIC=settings.provenance_topic,
        KTB_API_KEYS=json.dumps(settings.api_keys),
        KTB_API_TOPICS=json.dumps(settings.api_topics),
        KTB_ROUTES_FILE=str(settings.routes_file),
        KTB_LOG_LEVEL="WARNING",
    )
    # The API in its own process, as deployed: the client here does not share its CPU time.
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "api", "--port", str(port), env=env
    )
    await wait_ready(f"http://127.0.0.1:{port}")
    figures: dict[str, Any] = {"events": events, "concurrency": concurrency}
    try:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/cloudevents+json"}
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits, timeout=30
        ) as http:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for n in range(events):
                queue.put_nowait(n)
            latencies: list[float] = []

            async def post_worker() -> None:
                while not queue.empty():
                    n = queue.get_nowait()
                    body = {
                        "id": f"bench-{uid}-{n}",
                        "type": "com.example.order.placed",
                        "source": "bench",
                        "partitionkey": f"o-{n}",
                        "data": order(f"o-{n}"),
                    }
                    t0 = time.perf_counter()
                    response = await http.post("/events", content=json.dumps(body))
                    latencies.append(time.perf_counter() - t0)
                    assert response.status_code == 202, response.text

            cpu_before = cpu_seconds(server.pid)
            started = time.perf_counter()
            await asyncio.gather(*(post_worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            # CPU time of the API process per request: comparable across loaded machines.
            figures["post_cpu_ms_per_event"] = round(
                (cpu_seconds(server.pid) - cpu_before) / events * 1000, 2
            )
            figures["post_events_per_s"] = round(events / elapsed)
            figures["post_p50_ms"] = round(statistics.median(latencies) * 1000, 2)
            figures["post_p99_ms"] = round(statistics.quantiles(latencies, n=100)[98] * 1000, 2)
            # No bridge runs here: the events are pending, so each lookup also asks
            # Temporal visibility (KtbEventId); a busy Temporal shows up as 503s.
            gets: list[float] = []
            answers: dict[int, int] = {}
            for n in range(min(events, 200)):
                t0 = time.perf_counter()
                response = await http.get(f"/events/bench-{uid}-{n}")
                gets.append(time.perf_counter() - t0)
                answers[response.status_code] = answers.get(response.status_code, 0) + 1
            figures["get_pending_event_p50_ms"] = round(statistics.median(gets) * 1000, 2)
            figures["get_pending_event_answers"] = answers
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.concurrency))))
