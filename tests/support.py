"""Helpers the integration tests share: producing, reading back, running bridges and workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from bridge import kafka
from bridge.cli.tail import render
from bridge.codec import SchemaCatalog
from bridge.consumer import BridgeConsumer
from bridge.dispatch import Dispatcher
from bridge.dlq.publisher import DeadLetterPublisher
from bridge.envelope import Event, decode_record, encode_event
from bridge.ingress import Ingress
from bridge.kafka import stop_consumer
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import Telemetry
from bridge.provenance import ProvenanceWriter
from bridge.routes import Router, RoutesConfig
from bridge.sdk.egress import Publisher
from bridge.settings import REPO_ROOT, Settings

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.2
) -> T:
    """Retry ``check`` until it returns a truthy value or raises no AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def order_data(order_id: str, token: str = "tok_visa", total: int = 2500) -> dict[str, Any]:
    """A valid ``com.example.order.placed`` payload."""
    return {
        "order_id": order_id,
        "customer_id": "cust-1",
        "items": [{"sku": "sku-1", "quantity": 1, "unit_price_cents": total}],
        "total_cents": total,
        "currency": "EUR",
        "payment_token": token,
    }


async def topic_exists(settings: Settings, topic: str) -> bool:
    """Whether ``topic`` exists, asked without naming it (naming it may create it)."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 15.0
) -> list[TopicPartition]:
    """The partitions of ``topic``, refreshing metadata until they are known."""
    deadline = time.monotonic() + timeout
    parts = consumer.partitions_for_topic(topic) or set()
    while not parts and time.monotonic() < deadline:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await asyncio.sleep(0.2)
    return [TopicPartition(topic, p) for p in sorted(parts)]


class Services:
    """A producer plus readers for one test."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog, client: Client) -> None:
        self.settings = settings
        self.catalog = catalog
        self.client = client
        self.producer = kafka.producer(settings)

    async def start(self) -> None:
        """Start the producer."""
        await self.producer.start()

    async def stop(self) -> None:
        """Stop the producer."""
        await self.producer.stop()

    async def produce(
        self,
        topic: str,
        type: str,
        data: dict[str, Any],
        *,
        key: str | None = None,
        id: str | None = None,
        tenant: str | None = None,
        traceparent: str | None = None,
        content_type: str = "application/avro",
    ) -> str:
        """Encode and produce one event; return its id."""
        event_id = id or str(uuid.uuid4())
        record = encode_event(
            self.catalog,
            type=type,
            data=data,
            id=event_id,
            source="tests",
            key=key,
            tenant_id=tenant,
            traceparent=traceparent,
            content_type=content_type,
        )
        await self.producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=record.headers
        )
        return event_id

    async def produce_raw(
        self,
        topic: str,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        key: bytes | None = None,
    ) -> None:
        """Produce bytes as they are (poison records)."""
        await self.producer.send_and_wait(topic, value=value, key=key, headers=list(headers))

    async def read(self, topic: str, count: int, timeout: float = 30.0) -> list[ConsumerRecord]:
        """Read at least ``count`` records from the beginning of ``topic``."""
        consumer = kafka.consumer(self.settings)
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            tps = await partitions(consumer, topic, timeout)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[ConsumerRecord] = []
            while len(out) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend(records)
            return out
        finally:
            await stop_consumer(consumer)

    def decode(self, record: ConsumerRecord) -> Event:
        """Decode a record read back from Kafka."""
        return decode_record(
            self.catalog,
            value=record.value,
            headers=record.headers,
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    def render(self, record: ConsumerRecord) -> dict[str, Any]:
        """A record as ``ktb tail`` prints it."""
        return render(self.catalog, record)

    async def committed(self, topic: str) -> dict[int, int]:
        """The bridge group's committed offsets per partition of ``topic``."""
        consumer = kafka.consumer(self.settings, group_id=self.settings.group_id)
        await consumer.start()
        try:
            out = {}
            for tp in await partitions(consumer, topic):
                out[tp.partition] = await consumer.committed(tp) or 0
            return out
        finally:
            await stop_consumer(consumer)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The end offset of every partition of ``topic``."""
        consumer = kafka.consumer(self.settings)
        await consumer.start()
        try:
            tps = await partitions(consumer, topic)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await stop_consumer(consumer)

    async def workflow_ids(self, query: str) -> list[str]:
        """Workflow ids matching a visibility query."""
        return [wf.id async for wf in self.client.list_workflows(query)]


def recorder_routes(topic: str, prefix: str, **options: Any) -> list[dict[str, Any]]:
    """Every action kind on one topic, against ``KtbTestRecorder`` workflows
    ``<prefix>-<order id>`` on task queue ``prefix``: ``order.placed`` starts one, and a
    ``payment.confirmed``'s payment id picks the rest by its prefix (``note`` and
    ``finish`` signal, ``sws`` signals with start, ``add`` updates with start,
    ``cancel``, ``stop`` terminates). ``options`` go into every route."""
    common = {"topic": topic, "workflow_id": f"{prefix}-{{data.order_id}}", **options}
    starting = {**common, "workflow": "KtbTestRecorder", "task_queue": prefix}

    def by_payment(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": f"{name}-{prefix}",
            "type": "com.example.payment.confirmed",
            "when": f"data.payment_id.startsWith('{name}')",
            **extra,
        }

    return [
        {
            "name": f"start-{prefix}",
            "type": "com.example.order.placed",
            "action": "start",
            **starting,
        },
        by_payment("note", action="signal", signal="note", **common),
        by_payment("finish", action="signal", signal="finish", **common),
        by_payment("sws", action="signal_with_start", signal="note", **starting),
        by_payment("add", action="update_with_start", update="add", **starting),
        by_payment("cancel", action="cancel", **common),
        by_payment("stop", action="terminate", **common),
    ]


def payment(order_id: str, payment_id: str, amount: int = 1) -> dict[str, Any]:
    """A valid ``com.example.payment.confirmed`` payload."""
    return {"order_id": order_id, "payment_id": payment_id, "amount_cents": amount}


def routes_config(routes: list[dict[str, Any]], unmatched: str = "dead_letter") -> RoutesConfig:
    """A validated routes config from plain dicts."""
    return RoutesConfig.parse({"routes": routes, "unmatched": unmatched})


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    config: RoutesConfig,
    metrics: Metrics | None = None,
    provenance: bool = False,
) -> AsyncIterator[BridgeConsumer]:
    """An in-process bridge instance; ``provenance`` records to ``settings.provenance_topic``."""
    producer = kafka.producer(settings)
    await producer.start()
    router = Router(config)
    ingress = Ingress(
        catalog,
        router,
        Dispatcher(client, timedelta(seconds=settings.temporal_rpc_timeout_s)),
        DeadLetterPublisher(producer),
        metrics or Metrics(),
        provenance=ProvenanceWriter(producer, settings.provenance_topic) if provenance else None,
    )
    consumer = BridgeConsumer(settings, ingress, router.topics)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 60)
        await producer.stop()


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    task_queue: str,
    workflows: Sequence[type],
    activities: Sequence[Callable[..., Any]] = (),
    metrics: Metrics | None = None,
    provenance: bool = False,
) -> AsyncIterator[Worker]:
    """An in-process worker with the publishing activity registered."""
    producer = kafka.producer(settings)
    await producer.start()
    publisher = Publisher(
        producer,
        catalog,
        "tests",
        metrics or Metrics(),
        ProvenanceWriter(producer, settings.provenance_topic) if provenance else None,
    )
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows),
        activities=[publisher.publish, *activities],
    )
    try:
        async with worker:
            yield worker
    finally:
        await producer.stop()


def write_routes(path: Path, config: RoutesConfig) -> Path:
    """Write a routes file for a bridge subprocess."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    return path


def bridge_process(settings: Settings, routes_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """``ktb bridge`` as a separate OS process (for kill -9 tests)."""
    env = dict(os.environ)
    env.update(
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_TEMPORAL_ADDRESS=settings.temporal_address,
        KTB_GROUP_ID=settings.group_id,
        KTB_ROUTES_FILE=str(routes_file),
        KTB_SCHEMAS_DIR=str(REPO_ROOT / "schemas"),
        KTB_COMMIT_INTERVAL_S="0.2",
        KTB_RETRY_MAX_S="1",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "bridge"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def workflow_result(client: Client, workflow_id: str, timeout: float = 60.0) -> Any:
    """Wait for a workflow the bridge is about to start, then for its result."""
    handle = client.get_workflow_handle(workflow_id)

    async def exists() -> bool:
        try:
            await handle.describe()
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    await eventually(exists, timeout)
    return await asyncio.wait_for(handle.result(), timeout)


async def received(handle: WorkflowHandle[Any, Any]) -> list[int] | None:
    """What a Recorder noted, or ``None`` while it does not exist yet."""
    try:
        return await handle.query("received")
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, metrics: Metrics | None = None, telemetry: Telemetry | None = None
) -> AsyncIterator[str]:
    """The HTTP API served by uvicorn in this event loop on a free port; yields its base URL."""
    import uvicorn

    from bridge.api import create_app
    from bridge.dev.stack import free_port

    port = free_port()
    app = create_app(settings, metrics=metrics, telemetry=telemetry)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
            raise RuntimeError("the API did not start (see the log)")
        return server.started

    await eventually(started, 60, 0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
