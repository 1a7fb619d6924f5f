"""The storefront BFF against the real thing: Kafka, Temporal, the bridge and its HTTP API
(authentication on), the example routes and workers, and the orders, payments and
shipping HTTP servers; its cache in memory and in a real Redis.

Orders are placed through the storefront (``POST /events`` with its own key) and,
once, straight on Kafka as another channel would; the dashboard lists them with their
final status, is cached until an outcome event of the customer evicts it, shows
nothing of another tenant, and degrades to a partial answer when a server is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.api.auth import hash_key
from bridge.codec import SchemaCatalog
from bridge.settings import Settings
from services.orders.server import create_app as orders_app
from services.payments.server import create_app as payments_app
from services.shipping.server import create_app as shipping_app
from services.storefront import PLACED
from services.storefront.cache import RedisCache
from services.storefront.server import create_app, open_storefront, run_invalidation
from tests.integration.shop import Shop, example_routes, running_shop
from tests.support import eventually, order_data, running_api, serving, write_routes
from tests.support.redis import real_redis

KEY = "ktb_storefront-test-key"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Redis for the module (skipped, loudly, where it is not installed)."""
    with real_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@dataclass
class Rig:
    """The shop, the API and the storefront of one test."""

    shop: Shop
    http: httpx.AsyncClient
    tenant: str
    shipping: contextlib.AsyncExitStack

    async def dashboard(self, customer_id: str) -> tuple[dict[str, Any], str]:
        """The dashboard (asserting a 200) and its ``Cache-Status``."""
        answer = await self.http.get(f"/customers/{customer_id}/dashboard")
        assert answer.status_code == 200, answer.text
        return answer.json(), answer.headers["cache-status"]

    async def place(self, customer_id: str, order_id: str, token: str) -> dict[str, Any]:
        """Place an order through the storefront (asserting the 202)."""
        body = {
            "order_id": order_id,
            "items": [{"sku": "sku-1", "quantity": 2, "unit_price_cents": 1250}],
            "currency": "EUR",
            "payment_token": token,
        }
        answer = await self.http.post(f"/customers/{customer_id}/orders", json=body)
        assert answer.status_code == 202, answer.text
        accepted: dict[str, Any] = answer.json()
        assert answer.headers["location"] == accepted["status_url"]
        return accepted


@contextlib.asynccontextmanager
async def storefront_rig(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Any,
    topics: dict[str, str],
    uid: str,
    tmp_path: Path,
    cache_url: str | None,
) -> AsyncIterator[Rig]:
    """Everything the storefront talks to, and the storefront (its consumer live)."""
    tenant = f"t-{uid}"
    shop_settings = settings.model_copy(update={"data_dir": tmp_path})
    async with running_shop(shop_settings, catalog, client, topics, uid) as shop:
        routes = write_routes(tmp_path / "routes.yaml", example_routes(shop.config, topics))
        api_settings = shop_settings.model_copy(
            update={"routes_file": routes, "api_auth": True, "api_keys": {hash_key(KEY): tenant}}
        )
        async with (
            running_api(api_settings) as api_url,
            serving(orders_app(shop.stores["orders"]), lifespan="off") as orders_url,
            serving(payments_app(shop.stores["payments"]), lifespan="off") as payments_url,
            contextlib.AsyncExitStack() as shipping,
        ):
            shipping_url = await shipping.enter_async_context(
                serving(shipping_app(shop.stores["shipping"]), lifespan="off")
            )
            config = shop.config.model_copy(
                update={
                    "orders_port": int(orders_url.rsplit(":", 1)[1]),
                    "payments_port": int(payments_url.rsplit(":", 1)[1]),
                    "shipping_port": int(shipping_url.rsplit(":", 1)[1]),
                    "storefront_api_url": api_url,
                    "storefront_api_key": SecretStr(KEY),
                    "storefront_group": f"storefront-{uid}",
                    # Long enough that only events evict during the test.
                    "storefront_cache_ttl_s": 600.0,
                    "cache_url": cache_url,
                }
            )
            async with open_storefront(api_settings, config) as storefront:
                stop = asyncio.Event()
                consumer = asyncio.create_task(
                    run_invalidation(api_settings, config, storefront, stop)
                )
                transport = httpx.ASGITransport(app=create_app(storefront))
                try:
                    await asyncio.wait_for(storefront.live.wait(), 60)
                    async with httpx.AsyncClient(
                        transport=transport, base_url="http://storefront", timeout=30
                    ) as http:
                        yield Rig(shop, http, tenant, shipping)
                finally:
                    stop.set()
                    await consumer


def settled(orders: list[dict[str, Any]], count: int) -> bool:
    """``count`` orders, every one with its process closed and its read model final."""
    return len(orders) == count and all(
        o["process_status"] == "completed" and o["status"] in ("completed", "compensated")
        for o in orders
    )


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_dashboard_cached_evicted_by_outcome_events_and_partial_when_a_server_is_down(
    request, services, settings, catalog, client, topics, uid, tmp_path, backend
):
    cache_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    customer = f"c-{uid}"
    async with storefront_rig(settings, catalog, client, topics, uid, tmp_path, cache_url) as rig:
        # Another tenant's order of the same customer id: never on this storefront's view.
        foreign = f"{uid}-foreign"
        await services.produce(
            topics["orders"], PLACED, {**order_data(foreign), "customer_id": customer},
            key=foreign, tenant=f"other-{uid}",
        )  # fmt: skip
        first = await rig.place(customer, f"{uid}-1", "tok_visa")
        await rig.place(customer, f"{uid}-2", "tok_declined")
        assert first["workflow_id"] == f"{rig.tenant}:order-{uid}-1"
        assert first["progress_url"] == f"/operations/{first['operation_id']}/progress"
        assert (first["estimate_runs"], first["estimated_duration_s"]) == (0, None)
        for order_id in (foreign, f"{uid}-1", f"{uid}-2"):
            await rig.shop.outcomes(order_id)

        async def listed(count: int) -> tuple[dict[str, Any], str]:
            view, status = await rig.dashboard(customer)
            assert settled(view["orders"], count), view
            # A fetch that an outcome's eviction overtook is not stored; the next one is.
            assert status.startswith("storefront; fwd=miss") and "stored" in status, status
            return view, status

        view, status = await eventually(lambda: listed(2), timeout=60)
        assert view["partial"] is False and view["errors"] == {}
        by_id = {o["order_id"]: o for o in view["orders"]}
        assert set(by_id) == {f"{uid}-1", f"{uid}-2"}
        assert by_id[f"{uid}-1"]["status"] == "completed"
        assert by_id[f"{uid}-1"]["payment"]["status"] == "captured"
        assert by_id[f"{uid}-1"]["shipment"]["shipment_id"] == f"shp-{uid}-1"
        assert by_id[f"{uid}-2"]["status"] == "compensated"
        assert by_id[f"{uid}-2"]["shipment"] is None

        again, status = await rig.dashboard(customer)
        assert status.startswith("storefront; hit; ttl="), status
        assert again == view

        async def followed() -> dict[str, Any]:
            progress = await rig.http.get(first["progress_url"])
            assert progress.status_code == 200, progress.text
            assert progress.json()["status"] == "completed", progress.json()
            return dict(progress.json())

        assert (await eventually(followed, timeout=30))["workflow_id"] == first["workflow_id"]

        # An order that reaches Kafka another way: its outcome event evicts the entry.
        _, status = await rig.dashboard(customer)
        assert status.startswith("storefront; hit"), status
        direct = f"{uid}-3"
        await services.produce(
            topics["orders"], PLACED, {**order_data(direct), "customer_id": customer},
            key=direct, tenant=rig.tenant,
        )  # fmt: skip
        await rig.shop.outcomes(direct)

        async def evicted() -> dict[str, Any]:
            view, status = await rig.dashboard(customer)
            assert "hit" not in status.split("; "), status
            return view

        fresh = await eventually(evicted, timeout=30)
        assert direct in {o["order_id"] for o in fresh["orders"]}
        assert foreign not in {o["order_id"] for o in fresh["orders"]}

        # The shipping server stops: the dashboard is partial, marked, and not cached.
        await rig.shipping.aclose()
        placed = await rig.place(customer, f"{uid}-4", "tok_visa")  # evicts the entry
        # Runs have completed: the estimate is their median, not a constant.
        assert placed["estimated_duration_s"] is not None and placed["estimate_runs"] >= 2

        async def degraded(order_ids: set[str]) -> dict[str, Any]:
            partial, status = await rig.dashboard(customer)
            assert partial["partial"] is True
            assert set(partial["errors"]) == {"shipping"}, partial["errors"]
            assert "stored" not in status.split("; ") and "hit" not in status.split("; ")
            assert order_ids <= {o["order_id"] for o in partial["orders"]}, partial["orders"]
            assert all(o["shipment"] is None for o in partial["orders"])
            return dict(partial)

        # The placed order is on Kafka; it shows once the bridge has started its process.
        everyone = {f"{uid}-1", f"{uid}-2", direct, f"{uid}-4"}
        await eventually(lambda: degraded(everyone), timeout=30)
        # Partial answers are never stored: the next call is partial again, not a hit.
        await degraded(everyone)


async def test_redis_cache_serves_a_value_only_at_the_generation_it_was_stored_at(redis_url, uid):
    cache = RedisCache(redis_url, ttl_s=60)
    key = f"ktb:test:{uid}"
    try:
        before = await cache.generation(key)
        assert await cache.put(key, b'{"v": 1}', 60, before)
        hit = await cache.get(key)
        assert hit is not None and hit.body == b'{"v": 1}' and 0 < hit.ttl_s <= 60
        # A fetch that started before an eviction cannot store what it found.
        await cache.evict(key)
        assert await cache.get(key) is None
        assert not await cache.put(key, b'{"v": "stale"}', 60, before)
        assert await cache.get(key) is None
        assert await cache.put(key, b'{"v": 2}', 60, await cache.generation(key))
        assert (await cache.get(key)).body == b'{"v": 2}'  # type: ignore[union-attr]
    finally:
        await cache.aclose()
