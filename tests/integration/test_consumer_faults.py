"""The per-key engine under faults: failing dead letters, lost commits, hung Temporal calls,
and a Kafka pause under a slow Temporal (issue 14, items 3, 4, 6 and 13); and a consumer
behind by more than its buffer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.consumer import BridgeConsumer
from bridge.dev.stack import LocalStack
from bridge.dispatch import Dispatcher
from bridge.dlq import DeadLetterPublisher, WrittenLetter
from bridge.envelope import RecordLike, encode_event
from bridge.errors import BridgeError, TransientError
from bridge.ingress import Ingress
from bridge.kafka import ensure_topics
from bridge.observability.metrics import Metrics
from bridge.routes import Router, RoutesConfig
from bridge.settings import Settings
from tests.support import (
    Services,
    bridge_process,
    count_is,
    eventually,
    order_data,
    routes_config,
    running_worker,
    runs_per_id,
    write_routes,
)
from tests.workflows import Recorder

PLACED = "com.example.order.placed"


def start_route(topic: str, uid: str, workflow: str = "KtbTestNoop") -> dict[str, Any]:
    return {
        "name": f"start-{uid}",
        "topic": topic,
        "type": PLACED,
        "action": "start",
        "workflow": workflow,
        "task_queue": f"tq-{uid}",
        "workflow_id": f"wf-{uid}-{{data.order_id}}",
    }


@contextlib.asynccontextmanager
async def bridge(
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    config: RoutesConfig,
    ingress_type: type[Ingress] = Ingress,
    dead_letters_type: type[DeadLetterPublisher] = DeadLetterPublisher,
) -> AsyncIterator[tuple[BridgeConsumer, asyncio.Task[None]]]:
    """A bridge instance in this process, with the ingress and dead-letter publisher given."""
    producer = kafka.producer(settings)
    await producer.start()
    router = Router(config)
    dispatcher = Dispatcher(client, timedelta(seconds=settings.temporal_rpc_timeout_s))
    ingress = ingress_type(catalog, router, dispatcher, dead_letters_type(producer), Metrics())
    consumer = BridgeConsumer(settings, ingress, router.topics)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer, task
    finally:
        consumer.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 120)
        await producer.stop()


async def produce_orders(
    svc: Services, topic: str, keys: list[str], prefix: str, partition: int | None = None
) -> None:
    for key in keys:
        rec = encode_event(
            svc.catalog, type=PLACED, data=order_data(key), id=f"{prefix}-{key}",
            source="tests", key=key,
        )  # fmt: skip
        await svc.producer.send(
            topic, value=rec.value, key=rec.key, headers=rec.headers, partition=partition
        )
    await svc.producer.flush()


def private_settings(stack: LocalStack, uid: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": stack.kafka_bootstrap,
        "temporal_address": stack.temporal_address,
        "group_id": f"faults-{uid}",
        "retry_initial_s": 0.2,
        "retry_max_s": 2.0,
        **extra,
    }
    return Settings(**values)


async def committed_at_end(svc: Services, topic: str) -> bool:
    return await svc.committed(topic) == await svc.end_offsets(topic)


# --- item 4: a dead-letter write that fails ------------------------------------------------

CONFIRMED = "com.example.payment.confirmed"


class BuggyIngress(Ingress):
    """Handling a record whose event id starts with ``bug-`` raises an unexpected error."""

    async def handle(self, record: RecordLike, closed: asyncio.Event | None = None) -> Any:
        if dict(record.headers).get("ce_id", b"").startswith(b"bug-"):
            raise RuntimeError("a bug in the handling of one record (injected)")
        return await super().handle(record, closed)


class FlakyDeadLetters(DeadLetterPublisher):
    """Its first three publishes fail, as they do while the DLQ's leader is away."""

    def __init__(self, producer: Any) -> None:
        super().__init__(producer)
        self.failures = 0

    async def publish(self, record: RecordLike, error: BridgeError) -> WrittenLetter:
        if self.failures < 3:
            self.failures += 1
            raise TransientError("could not publish to the DLQ (injected)")
        return await super().publish(record, error)


async def test_a_failing_dead_letter_write_keeps_the_key_in_order(
    services: Services,
    topics: dict[str, str],
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    uid: str,
) -> None:
    topic = topics["orders"]
    config = routes_config(
        [
            start_route(topic, uid, "KtbTestRecorder"),
            {
                "name": f"note-{uid}",
                "topic": topic,
                "type": CONFIRMED,
                "action": "signal",
                "workflow_id": f"wf-{uid}-{{data.order_id}}",
                "signal": "note",
            },
        ]
    )

    async def confirm(seq: int, id: str | None = None) -> None:
        data = {"order_id": "k", "payment_id": f"p-{seq}", "amount_cents": seq}
        await services.produce(topic, CONFIRMED, data, key="k", id=id)

    await services.produce(topic, PLACED, order_data("k"), key="k")
    await confirm(99, id=f"bug-{uid}")
    for seq in (1, 2, 3):
        await confirm(seq)
    handle = client.get_workflow_handle(f"wf-{uid}-k")
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Recorder]),
        bridge(settings, catalog, client, config, BuggyIngress, FlakyDeadLetters) as (consumer, _),
    ):
        letters = consumer.ingress.dead_letters
        assert isinstance(letters, FlakyDeadLetters)
        await eventually(lambda: _true(letters.failures >= 1), timeout=60)
        # More records of the key, after its dead letter failed to be written.
        for seq in (4, 5):
            await confirm(seq)

        async def all_noted() -> list[int]:
            received: list[int] = await handle.query("received")
            assert received == [1, 2, 3, 4, 5][: len(received)], received
            return received if len(received) == 5 else []

        await eventually(all_noted, timeout=90)
        await eventually(lambda: committed_at_end(services, topic), timeout=30)
        await eventually(lambda: _true(consumer.buffered == 0), timeout=30)
    dead = await services.read(f"{topic}.dlq", 1)
    assert [dict(r.headers)["ktb_error_type"] for r in dead] == [b"internal_error"]


# --- item 6: a commit lost to a broker restart ---------------------------------------------


async def test_a_commit_lost_to_a_broker_restart_is_made_again(
    private_stack: LocalStack, catalog: SchemaCatalog, uid: str
) -> None:
    """The broker is down across a commit tick and comes back: the progress made before
    is committed, without redelivering anything.

    aiokafka itself retries a commit while the coordinator is unreachable, so this holds
    on the engine before issue 14 too; the commits that fail outright (and were lost
    then) are pinned in tests/unit/test_partition_state.py with an injected failure.
    """
    kafka_svc = private_stack.kafka
    assert kafka_svc is not None and kafka_svc.service is not None
    interval = 20.0
    settings = private_settings(private_stack, uid, commit_interval_s=interval)
    topic = f"commit-{uid}"
    await ensure_topics(settings, {topic: 3, f"{topic}.dlq": 1})
    client = await Client.connect(private_stack.temporal_address)
    svc = Services(settings, catalog, client)
    await svc.start()
    keys = [f"c{i}" for i in range(60)]
    try:
        async with bridge(settings, catalog, client, routes_config([start_route(topic, uid)])) as (
            consumer,
            _,
        ):
            await eventually(lambda: _true(bool(consumer.partitions)), timeout=120)
            assigned = time.monotonic()
            await produce_orders(svc, topic, keys, uid)
            await eventually(lambda: _true(consumer.processed == len(keys)), timeout=120)
            ends = await svc.end_offsets(topic)
            await svc.stop()
            # Down across the commit tick: that commit fails.
            kafka_svc.service.stop()
            await asyncio.sleep(max(0.0, assigned + interval + 5 - time.monotonic()))
            kafka_svc.service.start()
            await kafka_svc.wait_ready(120)
            svc = Services(settings, catalog, client)
            await svc.start()

            async def at_end() -> bool:
                return await svc.committed(topic) == ends

            await eventually(at_end, timeout=3 * interval)
            assert consumer.processed == len(keys)
    finally:
        await svc.stop()


# --- item 3, the consumer's half: stopping while Temporal hangs ------------------------------


class SwallowingIngress(Ingress):
    """Turns its task's cancellation into an error, as temporalio does for an update in
    flight (``WorkflowUpdateRPCTimeoutOrCancelledError``): the engine must stop anyway."""

    async def handle(self, record: RecordLike, closed: asyncio.Event | None = None) -> Any:
        try:
            return await super().handle(record, closed)
        except asyncio.CancelledError:
            raise WorkflowUpdateRPCTimeoutOrCancelledError() from None


@pytest.mark.parametrize("ingress_type", [Ingress, SwallowingIngress], ids=["plain", "swallowing"])
async def test_stop_returns_in_time_while_temporal_hangs(
    private_stack: LocalStack, catalog: SchemaCatalog, uid: str, ingress_type: type[Ingress]
) -> None:
    temporal = private_stack.temporal
    assert temporal is not None and temporal.service is not None and temporal.service.proc
    shutdown_s = 6.0
    settings = private_settings(private_stack, uid, shutdown_timeout_s=shutdown_s)
    topic = f"hang-{uid}"
    await ensure_topics(settings, {topic: 3, f"{topic}.dlq": 1})
    client = await Client.connect(private_stack.temporal_address)
    svc = Services(settings, catalog, client)
    await svc.start()
    route = {
        "name": f"add-{uid}",
        "topic": topic,
        "type": CONFIRMED,
        "action": "update_with_start",
        "workflow": "KtbTestRecorder",
        "task_queue": f"tq-{uid}",
        "workflow_id": f"wf-{uid}-{{data.order_id}}",
        "update": "add",
    }
    pgid = temporal.service.proc.pid
    try:
        async with bridge(settings, catalog, client, routes_config([route]), ingress_type) as (
            consumer,
            task,
        ):
            await eventually(lambda: _true(bool(consumer.partitions)), timeout=120)
            os.killpg(pgid, signal.SIGSTOP)
            for i in range(20):
                data = {"order_id": f"h{i}", "payment_id": f"p{i}", "amount_cents": i}
                await svc.produce(topic, CONFIRMED, data, key=f"h{i}")
            await eventually(lambda: _true(consumer.buffered == 20), timeout=60)
            await asyncio.sleep(1)  # the updates are on their way to a Temporal that hangs
            stopped = time.monotonic()
            consumer.stop()
            done, _ = await asyncio.wait({task}, timeout=shutdown_s + 30)
            print(f"stopped {time.monotonic() - stopped:.1f}s after stop() (budget {shutdown_s}s)")
            assert done, f"the bridge did not stop within {shutdown_s}s + 30s"
            task.result()
        # Nothing was acted on, so nothing was committed past the first record.
        assert await svc.committed(topic) == {0: 0, 1: 0, 2: 0}
    finally:
        os.killpg(pgid, signal.SIGCONT)
        await svc.stop()


# --- item 13: static membership and kill -9 -----------------------------------------------


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
async def test_a_bridge_restarted_after_kill_9(
    services: Services,
    topics: dict[str, str],
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    static: bool,
) -> None:
    """With ``KTB_GROUP_INSTANCE_ID`` a bridge killed and restarted within the session
    timeout takes its partitions back without a rebalance; the other member never
    notices. Without it (the baseline, printed for comparison) the group rebalances."""
    topic = topics["orders"]
    config = routes_config([start_route(topic, uid)])
    routes_file = write_routes(tmp_path / "routes.yaml", config)
    log_file = tmp_path / "bridge.log"
    if static:
        monkeypatch.setenv("KTB_SESSION_TIMEOUT_S", "30")
        monkeypatch.setenv("KTB_GROUP_INSTANCE_ID", f"killed-{uid}")
        other = settings.model_copy(
            update={"session_timeout_s": 30.0, "group_instance_id": f"other-{uid}"}
        )
    else:
        other = settings
    watched = Assignments()
    proc = bridge_process(settings, routes_file, log_file)
    try:
        async with bridge(other, catalog, client, config) as (survivor, _):
            watched.watch("survivor", survivor)

            async def shared() -> bool:
                return 0 < len(survivor.partitions) < 3 and survivor.processed > 0

            async def produce(keys: list[str]) -> None:
                await produce_orders(services, topic, keys, uid)

            await produce([f"a{i}" for i in range(30)])
            await eventually(shared, timeout=120)
            await eventually(lambda: committed_at_end(services, topic), timeout=60)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            killed = time.monotonic()
            proc = bridge_process(settings, routes_file, log_file)
            await produce([f"b{i}" for i in range(60)])
            await eventually(lambda: committed_at_end(services, topic), timeout=120, interval=0.5)
            print(
                f"{'static' if static else 'dynamic'}: committed to the end "
                f"{time.monotonic() - killed:.1f}s after kill -9, "
                f"{len(watched.since(killed))} rebalances seen by the other member"
            )
            if static:
                assert watched.since(killed) == [], "the restart rebalanced the group"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_file.read_text()[-3000:]
    assert await eventually(lambda: count_is(client, f"KtbRoute = 'start-{uid}'", 90), timeout=20)
    per_id = await runs_per_id(client, f"wf-{uid}-")
    assert len(per_id) == 90 and set(per_id.values()) == {1}, per_id


# --- item 13: a Kafka pause under a slow Temporal -------------------------------------------


class SlowProxy:
    """A TCP proxy in front of the Temporal frontend: bytes from the client to the server
    wait ``delay`` seconds before they go on, so every call takes at least that long."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        pumps = {
            self._spawn(self._pump(reader, up_writer, self.delay)),
            self._spawn(self._pump(up_reader, writer, 0.0)),
        }
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        forwarder = self._spawn(forward())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, chunk))
            queue.put_nowait((loop.time() + delay, b""))
            await forwarder
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            forwarder.cancel()


class Assignments:
    """Every partition assignment the watched bridges receive, with the time it came."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, frozenset[TopicPartition]]] = []

    def watch(self, name: str, consumer: BridgeConsumer) -> None:
        original = consumer.on_assigned

        def on_assigned(assigned: set[TopicPartition]) -> None:
            self.events.append((time.monotonic(), name, frozenset(assigned)))
            original(assigned)

        consumer.on_assigned = on_assigned  # type: ignore[method-assign]

    def since(self, moment: float) -> list[tuple[float, str, frozenset[TopicPartition]]]:
        return [e for e in self.events if e[0] > moment]

    def after(self, moment: float) -> Callable[[], Awaitable[bool]]:
        """A check for ``eventually``: some assignment came after ``moment``."""

        async def check() -> bool:
            return bool(self.since(moment))

        return check


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_kafka_pause_under_a_slow_temporal_settles(
    private_stack: LocalStack, catalog: SchemaCatalog, uid: str
) -> None:
    """Two bridges, every Temporal call delayed 2 s, Kafka paused past the session timeout:
    the group rebalances once or twice, then stays stable while the backlog is worked off,
    and the committed offsets reach the end offsets."""
    kafka_svc = private_stack.kafka.service if private_stack.kafka else None
    assert kafka_svc is not None and kafka_svc.proc is not None
    session_s = 10.0  # KTB_SESSION_TIMEOUT_S's default (and aiokafka's)
    pause_s = 2 * session_s
    topic = f"storm-{uid}"
    plain = private_settings(private_stack, uid)
    await ensure_topics(plain, {topic: 6, f"{topic}.dlq": 1})
    direct = await Client.connect(private_stack.temporal_address)
    svc = Services(plain, catalog, direct)
    await svc.start()
    config = routes_config([start_route(topic, uid)])
    watched = Assignments()
    # Most of the backlog on one partition: the member that owns it drains long, the
    # other briefly, so after the pause they come back to the group at different times.
    heavy = [f"h{i}" for i in range(3000)]
    light = [f"l{i}" for i in range(100)]
    try:
        async with SlowProxy(private_stack.temporal_port, delay=2.0) as proxy:
            settings = plain.model_copy(
                update={"temporal_address": proxy.address, "max_in_flight": 64}
            )
            slow = await Client.connect(proxy.address)
            async with (
                contextlib.AsyncExitStack() as members,
                bridge(settings, catalog, slow, config) as (first, _),
                bridge(settings, catalog, slow, config) as (second, _),
            ):
                watched.watch("first", first)
                watched.watch("second", second)
                bridges = [first, second]

                async def both_assigned() -> bool:
                    return bool(first.partitions) and bool(second.partitions)

                await eventually(both_assigned, timeout=120)
                await produce_orders(svc, topic, heavy, uid, partition=0)
                await produce_orders(svc, topic, light, uid)
                await eventually(
                    lambda: _true(first.processed + second.processed >= 100), timeout=180
                )
                # Whether the broker expires a member when it resumes or first takes the
                # heartbeats waiting in its sockets is a race: pause again until one
                # expires. Should none, a third member joins instead: its join revokes
                # partitions under the slow Temporal just the same, which is what started
                # the storm.
                for _ in range(2):
                    os.killpg(kafka_svc.proc.pid, signal.SIGSTOP)
                    try:
                        await asyncio.sleep(pause_s)
                    finally:
                        os.killpg(kafka_svc.proc.pid, signal.SIGCONT)
                    resumed = time.monotonic()
                    with contextlib.suppress(AssertionError):
                        await eventually(watched.after(resumed), timeout=2 * session_s)
                        break
                else:
                    third, _ = await members.enter_async_context(
                        bridge(settings, catalog, slow, config)
                    )
                    watched.watch("third", third)
                    bridges.append(third)
                    resumed = time.monotonic()
                    await eventually(watched.after(resumed), timeout=6 * session_s)
                    print("no Kafka pause expired a member; a third member joined instead")

                async def settled() -> bool:
                    now = time.monotonic()
                    since_pause = watched.since(resumed)
                    covered = {tp for member in bridges for tp in member.partitions}
                    return (
                        bool(since_pause)
                        and now - since_pause[-1][0] >= session_s
                        and all(member.partitions for member in bridges)
                        and len(covered) == 6
                    )

                await eventually(settled, timeout=180, interval=0.5)
                settled_at = time.monotonic()
                await eventually(lambda: committed_at_end(svc, topic), timeout=300, interval=1)
                caught_up = time.monotonic()
                await asyncio.sleep(session_s)
                after_pause = watched.since(resumed)
                print(
                    f"{len(after_pause)} assignments after the pause, settled "
                    f"{settled_at - resumed:.0f}s and committed to the end "
                    f"{caught_up - resumed:.0f}s after Kafka resumed"
                )
                assert watched.since(settled_at) == [], "the group rebalanced again after settling"
                assert await committed_at_end(svc, topic)
    finally:
        print(
            "assignments:",
            [(round(t - watched.events[0][0]), n, len(p)) for t, n, p in watched.events],
        )
        await svc.stop()


async def _true(value: bool) -> bool:
    return value


async def test_an_idle_partition_commits_past_a_transactions_commit_marker(
    services, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    """Records written in a Kafka transaction (a redrive, a user's exactly-once producer)
    end with a commit marker: the partition's end offset is one past the last record,
    and an idle bridge commits up to it, so its lag reads 0."""
    topic = f"txn-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    producer = kafka.producer(settings, transactional_id=f"txn-test-{uid}")
    await producer.start()
    try:
        async with producer.transaction():
            for n in range(3):
                record = encode_event(catalog, type=PLACED, data=order_data(f"t{n}"),
                                      id=f"t{n}-{uid}", source="tests", key=f"t{n}")  # fmt: skip
                await producer.send(topic, record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()

    async def marked() -> dict[int, int]:
        # The coordinator writes the marker after the commit returns.
        ends = await services.end_offsets(topic)
        return ends if ends == {0: 4} else {}  # three records and the marker

    ends = await eventually(marked)
    async with bridge(settings, catalog, client, routes_config([start_route(topic, uid)])) as (
        consumer,
        _,
    ):

        async def at_end() -> bool:
            return consumer.processed == 3 and await services.committed(topic) == ends

        await eventually(at_end, timeout=60)


# --- flow control: a consumer behind by more than its buffer ---------------------------------


class GatedIngress(Ingress):
    """Holds every record until ``gate`` opens, as a Temporal that does not keep up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.handed = 0

    async def handle(self, record: RecordLike, closed: asyncio.Event | None = None) -> Any:
        self.handed += 1
        await self.gate.wait()
        return await super().handle(record, closed)


async def test_a_full_buffer_takes_nothing_more_and_pauses_no_partition(
    services: Services,
    topics: dict[str, str],
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    uid: str,
) -> None:
    """Behind by more than ``max_buffered``, the consumer holds that many records and no
    partition is paused: the client drops a paused partition's fetched records and
    fetches them again, so pausing while full would fetch a backlog over and over."""
    topic = topics["orders"]
    keys = [f"k{n}" for n in range(300)]
    await produce_orders(services, topic, keys, uid)
    config = routes_config([start_route(topic, uid)])
    held = settings.model_copy(update={"max_buffered": 40})
    async with bridge(held, catalog, client, config, GatedIngress) as (consumer, _):
        ingress = consumer.ingress
        assert isinstance(ingress, GatedIngress)
        await eventually(lambda: _true(consumer.buffered == 40), timeout=30)
        for _ in range(10):  # a second of the loop's turns, full all along
            await asyncio.sleep(0.1)
            assert consumer.buffered == 40
            assert consumer.consumer is not None
            assert consumer.consumer.paused() == set()
        assert ingress.handed == 40
        ingress.gate.set()
        await eventually(lambda: committed_at_end(services, topic), timeout=120)
        assert consumer.processed == 300
    assert await runs_per_id(client, f"wf-{uid}-") == {f"wf-{uid}-{k}": 1 for k in keys}
