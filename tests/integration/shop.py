"""The example services wired for one test: real activities, workers, bridge, notifications.

Everything is named after the test's ``uid`` (task queues, consumer groups) and
uses the test's topics; the routes are the repository's ``routes.yaml`` with
those names substituted, so the flows exercise the real routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client
from temporalio.worker import Worker

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.envelope import Event, decode_consumed
from bridge.kafka import stop_consumer
from bridge.routes import RoutesConfig
from bridge.sdk.egress import Publisher
from bridge.sdk.faults import FaultInterceptor
from bridge.settings import REPO_ROOT, Settings
from services.common import consume_events
from services.config import ServicesConfig
from services.inventory import worker as inventory_service
from services.inventory.activities import SCHEMA as INVENTORY_SCHEMA
from services.notifications.consumer import SCHEMA as NOTIFICATIONS_SCHEMA
from services.notifications.consumer import Notifications
from services.orders import worker as orders_service
from services.orders.activities import SCHEMA as ORDERS_SCHEMA
from services.orders.workflows import OrderFulfillment
from services.payments import worker as payments_service
from services.payments.activities import SCHEMA as PAYMENTS_SCHEMA
from services.shipping import worker as shipping_service
from services.shipping.activities import SCHEMA as SHIPPING_SCHEMA
from services.store import Store
from tests.support import eventually, partitions, running_bridge

RETRY_SCALE = 0.01
PublishWrapper = Callable[[Publisher], Callable[..., Any]]


def services_config(uid: str, topics: dict[str, str]) -> ServicesConfig:
    """Service settings with this test's queues, topics and consumer group."""
    return ServicesConfig(
        orders_queue=f"orders-{uid}",
        inventory_queue=f"inventory-{uid}",
        payments_queue=f"payments-{uid}",
        shipping_queue=f"shipping-{uid}",
        outcome_topic=topics["outcomes"],
        compensation_topic=topics["compensations"],
        notifications_group=f"notifications-{uid}",
        retry_scale=RETRY_SCALE,
    )


def wiring_memo(config: ServicesConfig) -> dict[str, str]:
    """The route memo entries that point ``OrderFulfillment`` at these queues and topics."""
    return {
        "outcome_topic": config.outcome_topic,
        "compensation_topic": config.compensation_topic,
        "inventory_queue": config.inventory_queue,
        "payments_queue": config.payments_queue,
        "shipping_queue": config.shipping_queue,
    }


def example_routes(config: ServicesConfig, topics: dict[str, str]) -> RoutesConfig:
    """The repository's routes with this test's topics, task queue and memo."""
    raw = yaml.safe_load((REPO_ROOT / "routes.yaml").read_text())
    renamed = {"orders": topics["orders"], "payments": topics["payments"]}
    # Routes of the topics the test does not use (the outbox relay's) stay out.
    raw["routes"] = [route for route in raw["routes"] if route["topic"] in renamed]
    raw["envelope"] = {
        renamed[topic]: spec for topic, spec in raw.get("envelope", {}).items() if topic in renamed
    }
    for route in raw["routes"]:
        route["topic"] = renamed[route["topic"]]
        if "task_queue" in route:
            route["task_queue"] = config.orders_queue
            route["memo"] = {**route.get("memo", {}), **wiring_memo(config)}
    raw["topics"] = {}
    return RoutesConfig.parse(raw, "routes.yaml (test copy)")


def open_stores(settings: Settings) -> dict[str, Store]:
    """Every service's database under the settings' data directory."""
    schemas = {
        "orders": ORDERS_SCHEMA,
        "inventory": INVENTORY_SCHEMA,
        "payments": PAYMENTS_SCHEMA,
        "shipping": SHIPPING_SCHEMA,
        "notifications": NOTIFICATIONS_SCHEMA,
    }
    return {
        name: Store(ServicesConfig.database(name, settings), schema)  # type: ignore[arg-type]
        for name, schema in schemas.items()
    }


def all_activities(config: ServicesConfig, stores: dict[str, Store]) -> list[Callable[..., Any]]:
    """Every service activity, for one worker that hosts them all."""
    return [
        *orders_service.activities(config, stores["orders"]),
        *inventory_service.activities(config, stores["inventory"]),
        *payments_service.activities(config, stores["payments"]),
        *shipping_service.activities(config, stores["shipping"]),
    ]


@dataclass
class Collector:
    """Reads outcome and compensation topics from the beginning into memory."""

    settings: Settings
    catalog: SchemaCatalog
    topics: list[str]
    events: dict[str, list[Event]] = field(default_factory=dict)

    async def run(self) -> None:
        """Consume until cancelled."""
        consumer = kafka.consumer(self.settings)
        await consumer.start()
        try:
            tps = [tp for t in self.topics for tp in await partitions(consumer, t)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for r in records:
                        event = decode_consumed(self.catalog, r)
                        self.events.setdefault(r.topic, []).append(event)
        finally:
            await stop_consumer(consumer)

    def of(self, topic: str, key: str) -> list[Event]:
        """Events read so far on ``topic`` with Kafka key ``key``."""
        return [e for e in self.events.get(topic, []) if e.key == key]


@dataclass
class Shop:
    """The running services of one test."""

    settings: Settings
    config: ServicesConfig
    topics: dict[str, str]
    stores: dict[str, Store]
    collector: Collector

    def workflow_id(self, order_id: str) -> str:
        """The workflow the example route starts for ``order_id``."""
        return f"order-{order_id}"

    async def outcomes(self, order_id: str, count: int = 1, timeout: float = 90) -> list[Event]:
        """Wait for at least ``count`` outcome events of an order; return all seen."""
        return await self._wait(self.topics["outcomes"], order_id, count, timeout)

    async def compensations(self, order_id: str, count: int, timeout: float = 90) -> list[Event]:
        """Wait for at least ``count`` compensation events of an order; return all seen."""
        return await self._wait(self.topics["compensations"], order_id, count, timeout)

    async def _wait(self, topic: str, key: str, count: int, timeout: float) -> list[Event]:
        async def enough() -> list[Event]:
            found = self.collector.of(topic, key)
            assert len(found) >= count, f"{len(found)} of {count} events for {key} on {topic}"
            return found

        return await eventually(enough, timeout=timeout)

    async def notifications(self, order_id: str) -> list[dict[str, Any]]:
        """The notifications service's rows for an order."""
        return await self.stores["notifications"].rows(
            "SELECT * FROM notifications WHERE order_id = ? ORDER BY received_at, rowid", order_id
        )


@contextlib.asynccontextmanager
async def activity_workers(
    client: Client,
    config: ServicesConfig,
    stores: dict[str, Store],
    publisher: Publisher,
    *,
    orders: bool = True,
    publish: PublishWrapper | None = None,
) -> AsyncIterator[None]:
    """In-process workers of the services (the orders worker unless ``orders=False``)."""
    interceptors = [FaultInterceptor(scale=config.retry_scale)]
    workers = [
        Worker(
            client,
            task_queue=config.inventory_queue,
            activities=inventory_service.activities(config, stores["inventory"]),
            interceptors=interceptors,
        ),
        Worker(
            client,
            task_queue=config.payments_queue,
            activities=payments_service.activities(config, stores["payments"]),
            interceptors=interceptors,
        ),
        Worker(
            client,
            task_queue=config.shipping_queue,
            activities=shipping_service.activities(config, stores["shipping"]),
            interceptors=interceptors,
        ),
    ]
    if orders:
        publish_activity = publish(publisher) if publish else publisher.publish
        workers.append(
            Worker(
                client,
                task_queue=config.orders_queue,
                workflows=[OrderFulfillment],
                activities=[publish_activity, *orders_service.activities(config, stores["orders"])],
                interceptors=interceptors,
            )
        )
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        yield


@contextlib.asynccontextmanager
async def running_shop(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    topics: dict[str, str],
    uid: str,
    *,
    orders_worker: bool = True,
    publish: PublishWrapper | None = None,
) -> AsyncIterator[Shop]:
    """Bridge (example routes), service workers, notifications and an event collector."""
    config = services_config(uid, topics)
    stores = open_stores(settings)
    collector = Collector(settings, catalog, [config.outcome_topic, config.compensation_topic])
    producer = kafka.producer(settings)
    await producer.start()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(collector.run()),
        asyncio.create_task(
            consume_events(
                settings,
                catalog,
                [config.outcome_topic, config.compensation_topic],
                config.notifications_group,
                Notifications(stores["notifications"]).record,
                stop,
            )
        ),
    ]
    try:
        async with (
            activity_workers(
                client,
                config,
                stores,
                Publisher(producer, catalog, "tests"),
                orders=orders_worker,
                publish=publish,
            ),
            running_bridge(settings, catalog, client, example_routes(config, topics)),
        ):
            yield Shop(settings, config, topics, stores, collector)
    finally:
        stop.set()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        for store in stores.values():
            store.close()


def orders_worker_process(
    settings: Settings, config: ServicesConfig, log: Path
) -> subprocess.Popen[bytes]:
    """``python -m services.orders worker`` as a separate OS process (for kill -9 tests)."""
    env = dict(os.environ)
    env.update(
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_TEMPORAL_ADDRESS=settings.temporal_address,
        KTB_DATA_DIR=str(settings.data_dir),
        KTB_SERVICES_ORDERS_QUEUE=config.orders_queue,
        KTB_SERVICES_RETRY_SCALE=str(config.retry_scale),
        KTB_LOG_FORMAT="console",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.orders", "worker"],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
