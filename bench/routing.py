"""Routing cost in-process: decode + match + template + action build, per event, per core.

The routes are ``bench/routes.yaml`` (20 routes over the example domain, several
per event type, so matching walks past conditions that do not hold). The events
are a mix of the domain's types with currencies and amounts spread so that every
route is hit. Time is CPU time of this single thread, so the figure is per core
and does not depend on what else the machine runs. Baseline: the Avro decode of
the same event bodies alone (``fastavro.schemaless_reader``), the floor any
consumer of these events pays.

The Schema Registry case routes the same events as a Confluent producer writes them:
no CloudEvents headers (the envelope from the routes' defaults), the data in
Schema Registry framing under ids a real registry assigned (Apicurio, started for
the run unless ``KTB_SCHEMA_REGISTRY_URL`` names one). The first sight of each id is
fetched once before the timed passes; the timed passes run on the registry client's
cache, and the registry requests made during them are counted (0 expected).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
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
from bridge.decoding import Decoder
from bridge.errors import BridgeError, PermanentError
from bridge.ingress import Ingress
from bridge.routes import Router
from bridge.settings import REPO_ROOT, Settings

NAME = "routing"
ROUTES = REPO_ROOT / "bench" / "routes.yaml"
TARGET = 50_000
"""Events/s per core on the machine the target was set on, where the Avro decode of these
bodies ran at ``REFERENCE_DECODE`` per core."""
REFERENCE_DECODE = 241_000
TARGET_RATIO = TARGET / REFERENCE_DECODE
"""The target against the Avro decode measured in the same run: per-core speed on this
machine varies from day to day by up to three times, the ratio much less."""
REGISTRY_TARGET = 0.10
"""Most extra cost per event of the registry case over the local catalogue's."""
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


@contextlib.asynccontextmanager
async def registry_url(ctx: BenchContext) -> AsyncIterator[str]:
    """``KTB_SCHEMA_REGISTRY_URL`` when set, else an Apicurio Registry of the run's own."""
    if ctx.settings.schema_registry_url is not None:
        yield ctx.settings.schema_registry_url
        return
    from bridge.dev.registry import SchemaRegistry
    from bridge.dev.stack import free_port

    registry = SchemaRegistry(ctx.work_dir / "registry", free_port())
    print("starting an Apicurio Registry for the routing scenario ...", flush=True)
    registry.start()
    try:
        await registry.wait_ready()
        yield registry.url
    finally:
        if registry.service is not None:
            registry.service.stop()


async def registry_records(
    client: Any, catalog: SchemaCatalog, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The mix as a Confluent ``AvroSerializer`` writes it: registry framing, no headers.

    Each type's schema is registered under a subject of this run; the ids are the
    registry's. The Avro body is the single-object body (same schema, same bytes).
    """
    from bridge.registry.subjects import registry_schema

    run_id = uuid.uuid4().hex[:8]
    ids: dict[str, int] = {}
    for name in catalog.names():
        schema = registry_schema(catalog.get(name), "AVRO")
        ids[name] = await client.register_schema(f"ktb-bench-{run_id}-{name}", schema)
    out = []
    for n in range(count):
        topic, type_name, data = _mix(n)
        body = catalog.encode(type_name, data)[10:]  # past C3 01 and the fingerprint
        value = b"\x00" + ids[type_name].to_bytes(4, "big") + body
        key = data["order_id"].encode()
        stamp = int(time.time() * 1000)
        out.append(ConsumerRecord(topic, 0, n, stamp, 0, key, value, None, 0, len(value), []))
    return out


async def run(ctx: BenchContext) -> ScenarioResult:
    """Best of several passes over the mix (CPU time, one thread), local and registry."""
    from bridge.registry import SchemaRegistry

    count = ctx.size(10_000, 50_000)
    passes = ctx.size(5, 7)
    router = Router.from_file(ROUTES)
    ingress = Ingress(ctx.catalog, router, None, None)
    batch = records(ctx.catalog, count)
    hits = Counter(a.route if a else "-" for _, a in map(ingress.plan, batch))
    async with registry_url(ctx) as url:
        registry = SchemaRegistry.from_settings(ctx.settings.model_copy(
            update={"schema_registry_url": url}
        ))  # fmt: skip
        assert registry is not None
        try:
            framed = await registry_records(registry.client, ctx.catalog, count)
            decoder = Decoder(ctx.catalog, router.config.envelope, registry)
            via_registry = Ingress(ctx.catalog, router, None, None, decoder=decoder)
            for record in framed:  # first sight of each id: fetched once
                with contextlib.suppress(PermanentError):
                    await decoder.decode(record)
            first_sight = registry.requests
            registry_hits = Counter(
                a.route if a else "-" for _, a in map(via_registry.plan, framed)
            )
            local, remote = [], []
            for _ in range(passes):  # interleaved: both see the same machine
                local.append(routing_rate(ingress, batch))
                remote.append(routing_rate(via_registry, framed))
            timed_requests = registry.requests - first_sight
        finally:
            await registry.aclose()
    routing, via = max(local), max(remote)
    baseline = max(decode_rate(ctx.catalog, batch) for _ in range(passes))
    # The target as a share of the same run's decode rate: a machine three times slower
    # per core on the day does not miss it, nor a faster one meet it, by speed alone.
    met = routing / baseline >= TARGET_RATIO
    at_reference = routing / baseline * REFERENCE_DECODE
    # Each pass pairs the two cases back to back; the median pair is robust to a busy
    # machine slowing one pass (best-of rates alone moved the ratio by +-15 %).
    extra = statistics.median(a / b for a, b in zip(local, remote, strict=True)) - 1
    registry_met = extra <= REGISTRY_TARGET and timed_requests == 0
    if registry_hits != hits:
        raise BridgeError(f"the registry records routed differently: {registry_hits} vs {hits}")
    return ScenarioResult(
        NAME,
        {
            "per_s_per_core": rounded(routing),
            "us_per_event": rounded(1e6 / routing, 2),
            "avro_decode_per_s_per_core": rounded(baseline),
            "per_s_per_core_at_reference_speed": rounded(at_reference),
            "target": f">= {TARGET} at the reference speed (Avro decode {REFERENCE_DECODE}/s), "
            f"a ratio to decode of >= {TARGET_RATIO:.3f}",
            "met": met,
            "events": count,
            "routes": len(router.routes),
            "routes_hit": len(hits),
            "registry_avro_per_s_per_core": rounded(via),
            "registry_us_per_event": rounded(1e6 / via, 2),
            "registry_extra_cost": rounded(extra, 3),
            "registry_target": f"<= {REGISTRY_TARGET:.0%} more per event",
            "registry_met": registry_met,
            "registry_requests_first_sight": first_sight,
            "registry_requests_timed": timed_requests,
            "registry_schema_ids": len(ctx.catalog.names()),
            "registry": url,
        },
        [
            Row(
                f"events/s per core ({len(router.routes)} routes, {count:,} events)",
                fmt(routing, "/s"),
                fmt(baseline, "/s (Avro decode only)"),
                f"{ratio(routing, baseline):.3f}",
                f">= {TARGET_RATIO:.3f} ({TARGET:,}/s at decode {REFERENCE_DECODE:,}/s)",
                met,
            ),
            Row(
                "Schema Registry Avro, no CloudEvents headers: events/s per core (cached ids)",
                fmt(via, "/s"),
                fmt(routing, "/s (CloudEvents + single-object, same run)"),
                f"{extra:+.1%} cost/event",
                f"<= {REGISTRY_TARGET:.0%} more cost per event, no requests once cached",
                registry_met,
            ),
        ],
        [
            f"routing {at_reference:,.0f}/s per core at the reference speed (this run's "
            f"ratio to the Avro decode times the decode's {REFERENCE_DECODE:,}/s)",
            f"{len(hits)} of {len(router.routes)} routes hit by the event mix",
            f"registry case: {extra:+.1%} cost per event (median of {passes} paired passes); "
            f"registry requests: {first_sight} "
            f"on first sight of {len(ctx.catalog.names())} ids, {timed_requests} in "
            f"{passes} timed passes of {count:,} records ({url})",
        ],
    )


def local(count: int, passes: int) -> tuple[float, float, float]:
    """The local catalogue's case alone, in this process (no registry, no services):
    best-of routing and Avro decode rates, and the median ratio of passes paired back
    to back (steadier than the best-of ratio on a busy machine)."""
    catalog = SchemaCatalog.from_dir(Settings().schemas_dir)
    ingress = Ingress(catalog, Router.from_file(ROUTES), None, None)
    batch = records(catalog, count)
    routed, decoded = [], []
    for _ in range(passes):
        routed.append(routing_rate(ingress, batch))
        decoded.append(decode_rate(catalog, batch))
    paired = statistics.median(r / d for r, d in zip(routed, decoded, strict=True))
    return max(routed), max(decoded), paired


def main() -> None:
    """``python -m bench.routing``: ``local`` with its figures printed."""
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=local.__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=7)
    args = parser.parse_args()
    routing, baseline, paired = local(args.events, args.passes)
    print(
        f"routing {routing:,.0f} /s per core, Avro decode {baseline:,.0f} /s: ratio "
        f"{routing / baseline:.3f} (median of paired passes {paired:.3f}; "
        f"the target: {TARGET_RATIO:.3f}, {TARGET:,}/s at the decode's {REFERENCE_DECODE:,}/s)"
    )


if __name__ == "__main__":
    main()
