"""Routing cost in-process: decode + match + template + action build, per event, per core.

The routes are ``bench/routes.yaml`` (20 routes over the example domain, several
per event type, so matching walks past conditions that do not hold). The events
are a mix of the domain's types with currencies and amounts spread so that every
route is hit. Time is CPU time of this single thread, so the figure is per core
and does not depend on what else the machine runs. Baseline: the Avro decode of
the same event bodies alone (``fastavro.schemaless_reader``), the floor any
consumer of these events pays.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from typing import Any

import fastavro
from aiokafka.structs import ConsumerRecord

from bench.common import (
    BenchContext,
    Row,
    ScenarioResult,
    consumer_record,
    encode,
    fmt,
    ratio,
    rounded,
)
from bridge.codec import SchemaCatalog
from bridge.errors import PermanentError
from bridge.ingress import Ingress
from bridge.routes import Router
from bridge.settings import REPO_ROOT

NAME = "routing"
ROUTES = REPO_ROOT / "bench" / "routes.yaml"
TARGET = 20_000
ORDERS = "com.example.order."


def _mix(n: int) -> tuple[str, str, dict[str, Any]]:
    """The ``n``-th event of the mix: topic, type and data (60 % new orders)."""
    oid = f"o-{n:06d}"
    kind, m = n % 20, n // 20
    if kind < 12:
        total = 150_000 if m % 13 == 0 else 1000 + n % 9000
        items = [
            {"sku": f"sku-{i}", "quantity": 1 + i % 3, "unit_price_cents": total // 3}
            for i in range(25 if m % 17 == 0 else 3)
        ]
        return "orders", ORDERS + "placed", {
            "order_id": oid, "customer_id": f"c-{n % 500}", "items": items,
            "total_cents": total, "currency": ("EUR", "USD", "GBP", "CHF", "JPY")[n % 5],
            "payment_token": "tok_visa",
        }  # fmt: skip
    if kind < 14:
        amount = (-500, 200_000, 2500)[m % 3]
        return "payments", "com.example.payment.confirmed", {
            "order_id": oid, "payment_id": f"p-{n}", "amount_cents": amount,
        }  # fmt: skip
    if kind == 14:
        reason = "fraud" if m % 2 else "changed mind"
        return "orders", ORDERS + "cancelled", {"order_id": oid, "reason": reason}
    if kind == 15:
        return "orders.outcomes", ORDERS + "completed", {
            "order_id": oid, "customer_id": f"c-{n % 500}",
            "total_cents": 150_000 if m % 4 == 0 else 2500, "currency": "EUR",
            "reservation_id": f"r-{n}", "payment_id": f"p-{n}", "shipment_id": None,
        }  # fmt: skip
    if kind == 16:
        step = "payment" if m % 2 else "inventory"
        return "orders.outcomes", ORDERS + "failed", {
            "order_id": oid, "step": step, "reason": "declined",
        }  # fmt: skip
    if kind == 17:
        return "orders.outcomes", ORDERS + "compensated", {
            "order_id": oid, "step": "shipping", "reason": "no carrier",
            "compensated_steps": ["payment", "inventory"] if m % 2 else [],
        }  # fmt: skip
    return "orders.compensations", ORDERS + "step_compensated", {
        "order_id": oid, "step": ("payment", "inventory", "shipping")[m % 3], "detail": "undone",
    }  # fmt: skip


def records(catalog: SchemaCatalog, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """``count`` encoded records of the mix, as the consumer hands them to the ingress."""
    out = []
    for n in range(count):
        topic, type_name, data = _mix(n)
        out.append(consumer_record(topic, n, encode(catalog, type_name, data, data["order_id"])))
    return out


def routing_rate(ingress: Ingress, batch: list[ConsumerRecord[bytes, bytes]]) -> float:
    """Events per CPU second through decode, match, templates and action build."""
    started = time.thread_time()
    for record in batch:
        try:
            ingress.plan(record)
        except PermanentError:
            continue
    return len(batch) / (time.thread_time() - started)


def decode_rate(catalog: SchemaCatalog, batch: list[ConsumerRecord[bytes, bytes]]) -> float:
    """Events per CPU second of the Avro body decode alone."""
    schemas = [catalog.decode(r.value)[0].parsed for r in batch]
    bodies = [r.value[10:] for r in batch]
    started = time.thread_time()
    for schema, body in zip(schemas, bodies, strict=True):
        fastavro.schemaless_reader(io.BytesIO(body), schema, None)
    return len(batch) / (time.thread_time() - started)


async def run(ctx: BenchContext) -> ScenarioResult:
    """Best of several passes over the mix (CPU time, one thread)."""
    count = ctx.size(10_000, 50_000)
    passes = ctx.size(3, 5)
    router = Router.from_file(ROUTES)
    ingress = Ingress(ctx.catalog, router, None, None)
    batch = records(ctx.catalog, count)
    hits = Counter(a.route if a else "-" for _, a in map(ingress.plan, batch))
    routing = max(routing_rate(ingress, batch) for _ in range(passes))
    baseline = max(decode_rate(ctx.catalog, batch) for _ in range(passes))
    met = routing >= TARGET
    return ScenarioResult(
        NAME,
        {
            "per_s_per_core": rounded(routing),
            "us_per_event": rounded(1e6 / routing, 2),
            "avro_decode_per_s_per_core": rounded(baseline),
            "target": f">= {TARGET}",
            "met": met,
            "events": count,
            "routes": len(router.routes),
            "routes_hit": len(hits),
        },
        [
            Row(
                f"events/s per core ({len(router.routes)} routes, {count:,} events)",
                fmt(routing, "/s"),
                fmt(baseline, "/s (Avro decode only)"),
                f"{ratio(routing, baseline):.2f}",
                f">= {TARGET:,}/s",
                met,
            )
        ],
        [f"{len(hits)} of {len(router.routes)} routes hit by the event mix"],
    )
