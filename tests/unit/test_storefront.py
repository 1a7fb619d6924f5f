"""The storefront's pure parts: Cache-Status, the in-memory cache's generations, the
running median, and how a dashboard joins its parts (tenant scoping included)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from bridge import ConfigError, Settings
from bridge.api.lookup import attribute_filter, visibility_query
from bridge.api.problems import Problem
from services.config import ServicesConfig
from services.storefront import Dashboard
from services.storefront.cache import CacheStatus, MemoryCache, open_cache
from services.storefront.dashboard import Aggregator, Parts
from services.storefront.estimate import RunningMedian
from services.storefront.server import Storefront, open_storefront
from tests.support import until

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def test_cache_status_is_written_as_rfc_9211_says():
    assert CacheStatus(hit=True, ttl_s=12.7).header() == "storefront; hit; ttl=12"
    assert CacheStatus(hit=False).header() == "storefront; fwd=miss"
    assert CacheStatus(hit=False, stored=True, ttl_s=30).header() == (
        "storefront; fwd=miss; ttl=30; stored"
    )
    assert CacheStatus(hit=False, collapsed=True).header() == "storefront; fwd=miss; collapsed"
    assert CacheStatus(hit=False, detail="cache unavailable").header() == (
        'storefront; fwd=miss; detail="cache unavailable"'
    )


async def test_memory_cache_refuses_what_a_fetch_found_before_an_eviction():
    cache = MemoryCache()
    before = await cache.generation("c-1")
    assert await cache.put("c-1", b"v1", 60, before)
    found = await cache.get("c-1")
    assert found is not None and found.body == b"v1"
    await cache.evict("c-1")
    assert await cache.get("c-1") is None
    assert not await cache.put("c-1", b"stale", 60, before)
    assert await cache.put("c-1", b"v2", 60, await cache.generation("c-1"))
    assert (await cache.get("c-1")).body == b"v2"  # type: ignore[union-attr]
    assert await cache.put("c-2", b"gone", 0.0, 0)
    assert await cache.get("c-2") is None


async def test_memory_cache_keeps_at_most_its_size():
    cache = MemoryCache(max_entries=2)
    for key in ("a", "b", "c"):
        await cache.put(key, key.encode(), 60, 0)
    assert await cache.get("a") is None
    assert [(await cache.get(k)).body for k in ("b", "c")] == [b"b", b"c"]  # type: ignore[union-attr]


def test_only_redis_urls_configure_a_shared_cache():
    assert isinstance(open_cache(None, 30), MemoryCache)
    with pytest.raises(ConfigError, match="redis://"):
        open_cache("memcached://localhost", 30)


def test_the_estimate_is_the_median_of_the_most_recently_closed_runs():
    median = RunningMedian(size=3)
    assert median.median_s() is None and median.stale(60)
    for n, seconds in enumerate([1, 100, 2, 3]):
        closed = T0 + timedelta(minutes=n)
        median.add(f"run-{n}", closed - timedelta(seconds=seconds), closed)
    median.add("run-3", T0, T0 + timedelta(hours=1))  # seen again: no change
    # run-0 (the first to close) dropped out: the median of 100, 2 and 3.
    assert (median.runs, median.median_s()) == (3, 3.0)
    median.refreshed()
    assert not median.stale(60)


def _aggregator(scoped: bool) -> Aggregator:
    return Aggregator(
        upstreams=None,  # type: ignore[arg-type]
        workflow_type="OrderFulfillment",
        customer_attribute="CustomerId",
        part_timeout_s=1.0,
        durations=RunningMedian(10),
        scoped=scoped,
    )


def _process(order_id: str, status: str, start: datetime) -> dict[str, object]:
    return {
        "workflow_id": f"t:order-{order_id}",
        "run_id": f"r-{order_id}",
        "business_key": order_id,
        "status": status,
        "start_time": start.isoformat(),
        "close_time": None,
    }


def _parts(processes: list[dict[str, object]] | None, errors: dict[str, str]) -> Parts:
    return Parts(
        processes=processes,
        progress={"t:order-o-2": {"step": "charge_payment"}},
        orders=[
            {
                "order_id": o,
                "workflow_id": f"t:order-{o}",
                "status": "processing",
                "created_at": T0.isoformat(),
            }
            for o in ("o-1", "o-2", "other")
        ],
        payments=[{"order_id": "o-1", "status": "captured"}, {"order_id": "other"}],
        shipping=None,
        errors=errors,
    )


def test_a_scoped_dashboard_shows_read_models_only_for_listed_processes():
    parts = _parts(
        [
            _process("o-1", "completed", T0),
            _process("o-2", "running", T0 + timedelta(seconds=1)),
        ],
        {"shipping": "shipping unreachable (ConnectError)"},
    )
    views = _aggregator(scoped=True)._join(parts)
    assert [v.order_id for v in views] == ["o-2", "o-1"]  # newest first
    assert views[0].progress == {"step": "charge_payment"}
    assert views[1].payment == {"order_id": "o-1", "status": "captured"}
    assert all(v.shipment is None for v in views)
    # Unscoped (authentication off), the read models' own rows are shown too.
    unscoped = _aggregator(scoped=False)._join(_parts([], {}))
    assert {v.order_id for v in unscoped} == {"o-1", "o-2", "other"}


def test_without_the_processes_a_scoped_dashboard_withholds_the_read_models():
    parts = _parts(None, {"processes": "no answer within 1 s"})
    assert _aggregator(scoped=True)._join(parts) == []
    assert parts.errors == {
        "processes": "no answer within 1 s",
        "orders": "withheld: the processes part did not answer",
        "payments": "withheld: the processes part did not answer",
        "shipping": "withheld: the processes part did not answer",
    }


def test_process_listings_filter_on_a_routes_search_attribute():
    assert attribute_filter("CustomerId=c-1") == ("CustomerId", "c-1")
    query = visibility_query(tenant="t", attributes_equal=[("CustomerId", "c-1")])
    assert query == "KtbTenantId = 't' AND CustomerId = 'c-1'"
    for bad in ("CustomerId", "1x=c", "Customer Id=c", "CustomerId=it's"):
        with pytest.raises(Problem) as caught:
            attribute_filter(bad)
        assert caught.value.status == 422


class SlowBuild:
    """An aggregator whose builds wait for ``release``; counts them."""

    def __init__(self) -> None:
        self.builds = 0
        self.release = asyncio.Event()

    async def build(self, customer_id: str) -> Dashboard:
        self.builds += 1
        n = self.builds
        await self.release.wait()
        return Dashboard(
            customer_id=customer_id, generated_at=T0, orders=[], partial=False,
            errors={"build": str(n)},
        )  # fmt: skip


def _storefront(build: SlowBuild) -> Storefront:
    front = Storefront(
        ServicesConfig(storefront_cache_ttl_s=60),
        upstreams=None,  # type: ignore[arg-type]
        cache=MemoryCache(),
        aggregator=build,  # type: ignore[arg-type]
        key_prefix="test",
    )
    front.live.set()
    return front


async def test_concurrent_misses_share_one_fetch_and_an_eviction_starts_a_new_one():
    build = SlowBuild()
    front = _storefront(build)
    first = asyncio.create_task(front.dashboard("c-1"))
    second = asyncio.create_task(front.dashboard("c-1"))
    await until(lambda: build.builds == 1)
    # An outcome event of c-1 while the fetch runs: what it read may be old.
    await front.evict("c-1")
    third = asyncio.create_task(front.dashboard("c-1"))
    await until(lambda: build.builds == 2)
    build.release.set()
    (body1, status1), (body2, status2), (body3, status3) = await asyncio.gather(
        first, second, third
    )
    assert body1 == body2 and status2.collapsed and not status1.stored
    assert json.loads(body3)["errors"] == {"build": "2"} and status3.stored
    body, status = await front.dashboard("c-1")
    assert (body, status.hit) == (body3, True)


async def test_with_authentication_on_the_storefront_needs_a_key_of_its_own():
    with pytest.raises(ConfigError, match="KTB_SERVICES_STOREFRONT_API_KEY"):
        async with open_storefront(Settings(api_auth=True), ServicesConfig()):
            pass
