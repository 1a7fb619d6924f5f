"""Chaos harness: seed a known input, inject faults, compare the output with the input.

Runs a private Kafka + Temporal, bridge instances and service workers as
separate OS processes, produces N orders with unique keys (plus keys that get a
start and a sequence of signals, and ~1% poison records), injects faults at
seeded random times, waits for quiescence and checks that nothing was lost or
duplicated. The sequence routes park a failed key (``on_failure: park_key``): a few
sequence keys start with a poison record of their own, so the rest of their
sequence is parked until the harness discards the letter, as an operator would;
their signals must still arrive in offset order. ``python -m tests.chaos``
(``make chaos``) runs it at any size; the ``chaos`` test runs it small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from aiokafka import TopicPartition
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.dev.stack import LocalStack, Service, free_port
from bridge.dlq import LetterRef
from bridge.dlq.publisher import ERROR_HEADERS, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC
from bridge.envelope import decode_record, encode_event
from bridge.flow import WINDOW_WORKFLOW
from bridge.kafka import ensure_topics, stop_consumer
from bridge.policies import discard, read_parking
from bridge.settings import REPO_ROOT, Settings

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
CANCELLED = "com.example.order.cancelled"
COMPLETED = "com.example.order.completed"
COMPENSATED = "com.example.order.compensated"
STEP_COMPENSATED = "com.example.order.step_compensated"
CAPTURED = "com.example.payment.captured"
ORDERS = "orders"
OUTCOMES = "orders.outcomes"
COMPENSATIONS = "orders.compensations"
SEQ_QUEUE = "chaos-seq"
SEQ_SIGNALS = 5
WINDOW_EVENTS = 8
"""Events per window key: a debounced and a batched key each get this many, spread out."""
WINDOW_KINDS = {"deb": "DEB", "bat": "BAT"}
"""Window key prefix -> the currency that routes its events to the debounce or batch route."""
WORKERS = ("orders", "inventory", "payments", "shipping")
TOKENS = (("tok_visa", 0.8), ("tok_declined", 0.15), ("tok_flaky", 0.05))


@dataclass
class ChaosConfig:
    """Sizes and fault counts of one run."""

    events: int = 200
    seed: int = 1
    rate: float = 120.0
    bridge_kills: int = 2
    worker_kills: int = 1
    temporal_restarts: int = 1
    kafka_restarts: int = 1
    rebalances: int = 2
    outage_s: float = 10.0
    poison_ratio: float = 0.01
    seq_keys: int = 0
    parked_keys: int = 0
    """Sequence keys behind a poison record of their own (0: one per 200 events, at least 1)."""
    partitions: int = 3
    quiesce_timeout_s: float = 600.0
    data_dir: Path | None = None


@dataclass
class Report:
    """What a run injected, measured and found wrong."""

    events: int = 0
    poison: int = 0
    parked_keys: int = 0
    parked: int = 0
    """Records parked in orders.parked (distinct original offsets)."""
    faults: Counter[str] = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    window_events: int = 0
    dlq: int = 0
    dlq_redelivered: int = 0
    max_lag: int = 0
    max_bridge_rss_mib: float = 0.0
    outage_rss_mib: float = 0.0
    outage_dead_letters: int = 0
    kill_in_commit_window: bool = False
    seconds_to_quiescence: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not (self.missing or self.duplicated or self.violations)

    def table(self) -> str:
        """The summary table the harness prints."""
        rows = [
            ("events (orders + sequence keys)", self.events),
            ("poison records", self.poison),
            ("window events (debounce + batch routes)", self.window_events),
            ("sequence keys parked behind a poison record", self.parked_keys),
            ("records parked (distinct)", self.parked),
            *((f"fault: {k}", v) for k, v in sorted(self.faults.items())),
            ("kill inside accept→commit window", "yes" if self.kill_in_commit_window else "no"),
            ("missing workflows", len(self.missing)),
            ("duplicated workflows", len(self.duplicated)),
            ("dead letters (distinct records)", self.dlq),
            ("dead letters written again after a redelivery", self.dlq_redelivered),
            ("non-poison dead letters during Temporal outage", self.outage_dead_letters),
            ("max consumer lag (records)", self.max_lag),
            ("max bridge RSS (MiB)", f"{self.max_bridge_rss_mib:.0f}"),
            ("bridge RSS at end of outage (MiB)", f"{self.outage_rss_mib:.0f}"),
            ("time to quiescence (s)", f"{self.seconds_to_quiescence:.1f}"),
            ("violations", len(self.violations)),
        ]
        width = max(len(str(k)) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"  ! {v}" for v in self.violations[:50]]
        lines += [f"  ! missing {w}" for w in self.missing[:20]]
        lines += [f"  ! duplicated {w}" for w in self.duplicated[:20]]
        return "\n".join(lines)


def routes() -> dict[str, Any]:
    """The routes of a chaos run: the order saga plus sequence keys for the order check."""
    seq_id = "seq-{data.order_id}"
    return {
        "routes": [
            {"name": "seq-start", "topic": ORDERS, "type": PLACED, "action": "start",
             "when": "data.customer_id == 'seq'", "workflow": "KtbTestRecorder",
             "task_queue": SEQ_QUEUE, "workflow_id": seq_id, "on_failure": "park_key"},
            # Priority, fairness and a start delay on the saga's starts: the checks
            # (nothing missing, nothing duplicated) cover starts that carry them.
            {"name": "start-order", "topic": ORDERS, "type": PLACED, "action": "start",
             "workflow": "OrderFulfillment", "task_queue": "orders",
             "workflow_id": "order-{data.order_id}",
             "priority": "{data.items.0.quantity}", "fairness_key": "{data.customer_id}",
             "start_delay": "1s"},
            {"name": "seq-note", "topic": ORDERS, "type": CONFIRMED, "action": "signal",
             "workflow_id": seq_id, "signal": "note", "on_failure": "park_key"},
            {"name": "seq-finish", "topic": ORDERS, "type": CANCELLED, "action": "signal",
             "workflow_id": seq_id, "signal": "finish", "on_failure": "park_key"},
            # Windows: every event of a key reaches exactly one run of its workflow id.
            # dedupe_for outlasts the run, so a record redelivered late is still known.
            {"name": "win-debounce", "topic": ORDERS, "type": CAPTURED, "action": "start",
             "when": "data.currency == 'DEB'", "workflow": "KtbTestWindow",
             "task_queue": SEQ_QUEUE, "workflow_id": "deb-{data.order_id}",
             "debounce": {"period": "1s", "max_wait": "4s", "dedupe_for": "1h"}},
            {"name": "win-batch", "topic": ORDERS, "type": CAPTURED, "action": "start",
             "when": "data.currency == 'BAT'", "workflow": "KtbTestWindow",
             "task_queue": SEQ_QUEUE, "workflow_id": "bat-{data.order_id}",
             "batch": {"max_events": 3, "max_wait": "2s", "dedupe_for": "1h"}},
        ],
        "unmatched": "dead_letter",
    }  # fmt: skip


def order(order_id: str, token: str, customer: str = "cust") -> dict[str, Any]:
    """An ``order.placed`` payload."""
    return {
        "order_id": order_id,
        "customer_id": customer,
        # One SKU per order: a shared one runs out of stock (1,000 by default) and
        # later orders then fail at reservation, which is not what the run checks.
        "items": [{"sku": f"sku-{order_id}", "quantity": 1, "unit_price_cents": 1000}],
        "total_cents": 1000,
        "currency": "EUR",
        "payment_token": token,
    }


class Chaos:
    """One chaos run."""

    def __init__(self, config: ChaosConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.log = log
        self.rng = random.Random(config.seed)
        self.report = Report()
        self.dir = config.data_dir or Path(f".ktb/chaos-{config.seed}-{os.getpid()}")
        self.stack = LocalStack(
            self.dir / "stack",
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            temporal_port=free_port(),
            headless=True,
        )
        self.bridges: dict[str, Service] = {}
        self.workers: dict[str, Service] = {}
        self.catalog = SchemaCatalog.from_dir(REPO_ROOT / "schemas")
        self.expected_tokens: dict[str, str] = {}
        self.seq_keys: list[str] = []
        self.window_keys: list[str] = []
        self.items: list[tuple[str, str, dict[str, Any], str]] = []
        self.parked_keys: list[str] = []
        self.poison_values: list[bytes] = []
        self._producing = True
        self._outage = False

    # --- processes -------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """Settings pointing at the private stack."""
        return Settings(
            kafka_bootstrap=self.stack.kafka_bootstrap,
            temporal_address=self.stack.temporal_address,
            group_id="chaos-bridge",
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KTB_KAFKA_BOOTSTRAP=self.stack.kafka_bootstrap,
            KTB_TEMPORAL_ADDRESS=self.stack.temporal_address,
            KTB_GROUP_ID="chaos-bridge",
            KTB_ROUTES_FILE=str(self.dir / "routes.yaml"),
            KTB_DATA_DIR=str(self.dir / "data"),
            KTB_COMMIT_INTERVAL_S="1.0",
            KTB_RETRY_MAX_S="2",
            KTB_SHUTDOWN_TIMEOUT_S="10",
            KTB_SERVICES_RETRY_SCALE="0.05",
            KTB_API_PORT=str(free_port()),
            KTB_METRICS_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start_bridge(self, name: str) -> None:
        svc = Service(
            name,
            [sys.executable, "-m", "bridge", "bridge"],
            self.dir / "logs" / f"{name}.log",
            env=self._env(),
        )
        svc.start()
        self.bridges[name] = svc

    def _start_worker(self, name: str) -> None:
        module = "tests.chaos.worker" if name == "seq" else f"services.{name}"
        svc = Service(
            f"worker-{name}",
            [sys.executable, "-m", module, "worker"],
            self.dir / "logs" / f"worker-{name}.log",
            env=self._env(),
        )
        svc.start()
        self.workers[name] = svc

    # --- input -----------------------------------------------------------------------

    def _plan(self) -> list[tuple[str, str, dict[str, Any], str]]:
        """The input: (type, key, data, kind) in production order, seeded."""
        cfg = self.config
        items: list[tuple[str, str, dict[str, Any], str]] = []
        seq_keys = cfg.seq_keys or max(2, cfg.events // 100)
        parked_keys = cfg.parked_keys or max(1, cfg.events // 200)
        weights = [w for _, w in TOKENS]
        for i in range(cfg.events):
            token = self.rng.choices([t for t, _ in TOKENS], weights)[0]
            oid = f"o{i:06d}"
            self.expected_tokens[oid] = token
            items.append((PLACED, oid, order(oid, token), "order"))
        for k in range(seq_keys + parked_keys):
            key = f"s{k:04d}" if k < seq_keys else f"q{k - seq_keys:04d}"
            self.seq_keys.append(key)
            at = self.rng.randrange(len(items) // 2 + 1)
            steps: list[tuple[str, str, dict[str, Any], str]] = [
                (PLACED, key, order(key, "tok_visa", "seq"), "seq")
            ]
            if k >= seq_keys:
                # A poison record of the key first: the whole sequence is parked.
                self.parked_keys.append(key)
                steps.insert(0, ("poison", key, {}, "poison"))
            steps += [
                (CONFIRMED, key, {"order_id": key, "payment_id": f"p{n}", "amount_cents": n}, "seq")
                for n in range(1, SEQ_SIGNALS + 1)
            ]
            steps.append((CANCELLED, key, {"order_id": key, "reason": "done"}, "seq"))
            # Spread a key's records over the run so faults hit them mid-sequence; each
            # goes after the previous one, so production order is the sequence order.
            pos = at
            for step in steps:
                pos = min(len(items), pos + self.rng.randint(1, 30))
                items.insert(pos, step)
        for k in range(seq_keys):
            for prefix, currency in WINDOW_KINDS.items():
                key = f"{prefix}{k:04d}"
                self.window_keys.append(key)
                pos = self.rng.randrange(len(items) // 2 + 1)
                for n in range(WINDOW_EVENTS):
                    data = {"order_id": key, "payment_id": f"p{n}", "amount_cents": n,
                            "currency": currency}  # fmt: skip
                    pos = min(len(items), pos + self.rng.randint(1, 60))
                    items.insert(pos, (CAPTURED, key, data, "window"))
        poison = max(1, int(cfg.events * cfg.poison_ratio))
        for p in range(poison):
            items.insert(self.rng.randrange(len(items)), ("poison", f"x{p}", {}, "poison"))
        return items

    def _poison(self, n: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Three kinds: not Avro, an unknown fingerprint, JSON that does not fit."""
        base = [("ce_specversion", b"1.0"), ("ce_id", f"poison-{n}".encode()),
                ("ce_source", b"chaos"), ("ce_type", PLACED.encode())]  # fmt: skip
        kind = n % 3
        if kind == 0:
            return f"not avro {n}".encode(), [*base, ("content-type", b"application/avro")]
        if kind == 1:
            value = b"\xc3\x01" + self.rng.randbytes(8) + f"body {n}".encode()
            return value, [*base, ("content-type", b"application/avro")]
        return (
            json.dumps({"order_id": f"x{n}", "total_cents": "lots"}).encode(),
            [*base, ("content-type", b"application/json")],
        )

    async def _produce(self, items: list[tuple[str, str, dict[str, Any], str]]) -> None:
        producer = kafka.producer(self.settings, request_timeout_ms=30000)
        await producer.start()
        try:
            interval = 1.0 / self.config.rate
            next_at = time.monotonic()
            for n, (type_name, key, data, kind) in enumerate(items):
                if kind == "poison":
                    value, headers = self._poison(len(self.poison_values))
                    self.poison_values.append(value)
                else:
                    record = encode_event(self.catalog, type=type_name, data=data,
                                          id=f"chaos-{n}", source="chaos", key=key)  # fmt: skip
                    value, headers = record.value, record.headers
                await self._send_retrying(producer, key, value, headers)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await producer.stop()
            self._producing = False

    async def _send_retrying(self, producer: Any, key: str, value: bytes, headers: Any) -> None:
        from aiokafka.errors import KafkaError

        while True:
            try:
                await producer.send_and_wait(
                    ORDERS, value=value, key=key.encode(), headers=list(headers)
                )
                return
            except KafkaError:
                # The broker is being restarted by the harness; the record must still go in.
                await asyncio.sleep(0.5)

    # --- faults ------------------------------------------------------------------------

    def _schedule(self, window: float) -> list[tuple[float, str]]:
        cfg = self.config
        kinds = (
            ["bridge_kill"] * cfg.bridge_kills
            + ["worker_kill"] * cfg.worker_kills
            + ["temporal_restart"] * cfg.temporal_restarts
            + ["kafka_restart"] * cfg.kafka_restarts
            + ["rebalance"] * cfg.rebalances
            + (["temporal_outage"] if cfg.outage_s > 0 else [])
        )
        self.rng.shuffle(kinds)
        slot = window / (len(kinds) + 1)
        return [(slot * (i + 1) + self.rng.uniform(-slot / 4, slot / 4), k)
                for i, k in enumerate(kinds)]  # fmt: skip

    async def _inject(self, schedule: list[tuple[float, str]], started: float) -> None:
        rebalance_step = 0
        first_kill = True
        for at, kind in schedule:
            delay = started + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.log(f"[{time.monotonic() - started:6.1f}s] fault: {kind}")
            if kind == "bridge_kill":
                if first_kill:
                    self.report.kill_in_commit_window = await self._wait_for_commit_window()
                    first_kill = False
                name = self.rng.choice(sorted(self.bridges))
                self.bridges[name].kill()
                self._start_bridge(name)
            elif kind == "worker_kill":
                name = self.rng.choice(WORKERS)
                self.workers[name].kill()
                await asyncio.sleep(1)
                self._start_worker(name)
            elif kind == "temporal_restart":
                await self._restart_temporal(0)
            elif kind == "temporal_outage":
                await self._restart_temporal(self.config.outage_s)
            elif kind == "kafka_restart":
                assert self.stack.kafka is not None and self.stack.kafka.service is not None
                self.stack.kafka.service.stop()
                await asyncio.sleep(2)
                self.stack.kafka.start()
                await self.stack.kafka.wait_ready(90)
            elif kind == "rebalance":
                extra = f"bridge-{2 + rebalance_step % 2}"
                if extra in self.bridges and self.bridges[extra].alive():
                    self.bridges.pop(extra).stop()
                else:
                    self._start_bridge(extra)
                rebalance_step += 1
            self.report.faults[kind] += 1
        for name in [n for n in self.bridges if n != "bridge-1"]:
            self.bridges.pop(name).stop()

    async def _restart_temporal(self, down_s: float) -> None:
        temporal = self.stack.temporal
        assert temporal is not None and temporal.service is not None
        before = await self._dlq_size()
        temporal.service.stop()
        if down_s:
            self._outage = True
            await asyncio.sleep(down_s)
            self.report.outage_rss_mib = self._bridge_rss()
            poison = set(self.poison_values)
            letters = (await self._read_all(ORDERS + ".dlq", 1))[before:]
            self.report.outage_dead_letters = sum(1 for r in letters if r.value not in poison)
            self._outage = False
        temporal.start()
        await temporal.wait_ready(90)

    async def _wait_for_commit_window(self, timeout: float = 20.0) -> bool:
        """Wait until Temporal has accepted a start whose record is not committed yet.

        The start's ``ktb`` memo says which partition and offset it came from; a
        kill then lands between Temporal accepting the start and the offset commit.
        """
        client = await Client.connect(self.stack.temporal_address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = await self._committed()
            try:
                async for wf in client.list_workflows("KtbRoute = 'start-order'", limit=20):
                    origin = (await wf.memo()).get("ktb", {})
                    if origin.get("offset", -1) >= committed.get(origin.get("partition"), 0):
                        return True
            except RPCError:
                pass  # an overloaded server times out a listing; look again
            await asyncio.sleep(0.05)
        return False

    # --- observation ---------------------------------------------------------------------

    def _bridge_rss(self) -> float:
        total = 0.0
        for svc in self.bridges.values():
            if svc.proc is not None and svc.alive():
                with contextlib.suppress(psutil.Error):
                    total = max(total, psutil.Process(svc.proc.pid).memory_info().rss / 2**20)
        return total

    async def _committed(self) -> dict[int, int]:
        consumer = kafka.consumer(self.settings, group_id="chaos-bridge")
        try:
            await consumer.start()
            out = {}
            for p in range(self.config.partitions):
                out[p] = await consumer.committed(TopicPartition(ORDERS, p)) or 0
            return out
        finally:
            await consumer.stop()

    async def _ends(self, topic: str, partitions: int) -> dict[int, int]:
        consumer = kafka.consumer(self.settings)
        try:
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await stop_consumer(consumer)

    async def _dlq_size(self) -> int:
        with contextlib.suppress(Exception):
            return sum((await self._ends(ORDERS + ".dlq", 1)).values())
        return 0

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.report.max_bridge_rss_mib = max(self.report.max_bridge_rss_mib, self._bridge_rss())
            if self._outage:
                continue
            with contextlib.suppress(Exception):
                ends = await self._ends(ORDERS, self.config.partitions)
                committed = await self._committed()
                lag = sum(max(0, ends[p] - committed.get(p, 0)) for p in ends)
                self.report.max_lag = max(self.report.max_lag, lag)

    async def _read_all(self, topic: str, partitions: int) -> list[Any]:
        """Every record of ``topic``, from its first to its last offset."""
        consumer = kafka.consumer(self.settings)
        try:
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            begins = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            want = sum(ends[tp] - begins[tp] for tp in tps)
            for tp in tps:
                consumer.seek(tp, begins[tp])
            out: list[Any] = []
            deadline = time.monotonic() + 120
            while len(out) < want and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
            if len(out) < want:
                self.report.violations.append(f"read {len(out)} of {want} records of {topic}")
            return out
        finally:
            await stop_consumer(consumer)

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> Report:
        """Start everything, produce, inject, wait for quiescence, check."""
        require_empty(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "routes.yaml").write_text(yaml.safe_dump(routes()))
        await self.stack.start()
        try:
            await ensure_topics(
                self.settings,
                {ORDERS: self.config.partitions, ORDERS + ".dlq": 1, OUTCOMES: 3,
                 COMPENSATIONS: 3, "ktb.provenance": 3},
            )  # fmt: skip
            items = self.items = self._plan()
            self.report.events = self.config.events + len(self.seq_keys)
            self.report.window_events = sum(1 for i in items if i[3] == "window")
            self.report.poison = len([i for i in items if i[3] == "poison"])
            self.report.parked_keys = len(self.parked_keys)
            self._start_bridge("bridge-1")
            for name in (*WORKERS, "seq"):
                self._start_worker(name)
            window = len(items) / self.config.rate
            started = time.monotonic()
            watcher = asyncio.create_task(self._watch())
            try:
                releaser = asyncio.create_task(self._release_parked())
                await asyncio.gather(
                    self._produce(items), self._inject(self._schedule(window), started)
                )
                await self._quiesce(started)
            finally:
                for task in (watcher, releaser):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self._check()
        finally:
            for svc in [*self.bridges.values(), *self.workers.values()]:
                svc.stop()
            self.stack.stop()
        return self.report

    async def _release_parked(self) -> None:
        """Discard the letters blocking the parked keys, as an operator would, for as
        long as the run lasts (the bridges act on the discards). A letter is discarded only
        once a record is parked behind it: discarded earlier, it would release nothing and
        the key's later records would flow live, never parked."""
        wanted = {k.encode() for k in self.parked_keys}
        while True:
            await asyncio.sleep(2)
            with contextlib.suppress(Exception):  # Kafka restarts: the next round tries
                async with read_parking(self.settings) as state:
                    blocks = [
                        b
                        for b in state.blocks(ORDERS)
                        if b.key in wanted and not b.discarded and b.parked > 0
                    ]
                for block in blocks:
                    dlq, partition, offset = block.letter.rsplit(":", 2)
                    await discard(self.settings, dlq, [LetterRef(int(partition), int(offset))])

    async def _quiesce(self, started: float) -> None:
        client = await Client.connect(self.stack.temporal_address)
        deadline = time.monotonic() + self.config.quiesce_timeout_s
        expected = len(self.expected_tokens) + len(self.seq_keys)

        async def quiet() -> bool:
            ends = await self._ends(ORDERS, self.config.partitions)
            if await self._committed() != ends:
                return False
            total = (await client.count_workflows("")).count
            # Window collectors stay open (dedupe_for) after their last window.
            running = (
                await client.count_workflows(
                    f"ExecutionStatus = 'Running' AND WorkflowType != '{WINDOW_WORKFLOW}'"
                )
            ).count
            delivered = await self._window_deliveries(client)
            windows_done = all(
                set(ids) >= set(self._window_expected()[k]) for k, ids in delivered.items()
            ) and len(delivered) == len(self.window_keys)
            return total >= expected and running == 0 and windows_done

        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await quiet():
                    self.report.seconds_to_quiescence = time.monotonic() - started
                    return
            await asyncio.sleep(2)
        self.report.violations.append(
            f"no quiescence within {self.config.quiesce_timeout_s:.0f}s "
            "(uncommitted records or running workflows remain)"
        )
        self.report.seconds_to_quiescence = time.monotonic() - started

    async def _check(self) -> None:
        client = await Client.connect(self.stack.temporal_address)
        rep = self.report
        runs: Counter[str] = Counter()
        statuses: dict[str, WorkflowExecutionStatus | None] = {}
        async for wf in client.list_workflows(""):
            if wf.workflow_type == WINDOW_WORKFLOW or wf.id.split("-", 1)[0] in WINDOW_KINDS:
                continue  # a collector's runs, a window's runs: checked by _check_windows
            runs[wf.id] += 1
            statuses[wf.id] = wf.status
        expected_ids = {f"order-{o}" for o in self.expected_tokens} | {
            f"seq-{k}" for k in self.seq_keys
        }
        rep.missing = sorted(expected_ids - set(runs))
        rep.duplicated = sorted(w for w, n in runs.items() if n > 1)
        unexpected = sorted(set(runs) - expected_ids)
        if unexpected:
            rep.violations.append(f"{len(unexpected)} unexpected workflows, e.g. {unexpected[:3]}")
        not_done = [w for w, s in statuses.items() if s is not WorkflowExecutionStatus.COMPLETED]
        if not_done:
            rep.violations.append(f"{len(not_done)} workflows not completed, e.g. {not_done[:3]}")

        await self._check_events(OUTCOMES, COMPENSATIONS)
        await self._check_windows(client)
        await self._check_dlq()
        await self._check_parked()
        for key in self.seq_keys:
            handle = client.get_workflow_handle(f"seq-{key}")
            try:
                got = await asyncio.wait_for(handle.result(), 30)
            except Exception as exc:  # any failure is a violation to report, not a crash
                rep.violations.append(f"seq-{key}: no result ({exc!r})")
                continue
            if got != list(range(1, SEQ_SIGNALS + 1)):
                rep.violations.append(f"seq-{key}: signals applied as {got}, not in offset order")
        ends = await self._ends(ORDERS, self.config.partitions)
        committed = await self._committed()
        if committed != ends:
            rep.violations.append(f"committed offsets {committed} are not at the end {ends}")

    def _window_expected(self) -> dict[str, list[str]]:
        """Window workflow id -> the ids of its events, in production order."""
        expected: dict[str, list[str]] = {}
        for n, (_, key, _, kind) in enumerate(self.items):
            if kind == "window":
                expected.setdefault(f"{key[:3]}-{key}", []).append(f"chaos-{n}")
        return expected

    async def _window_deliveries(self, client: Client) -> dict[str, list[str]]:
        """Window workflow id -> the event ids its completed runs received, oldest run first."""
        runs: dict[str, list[tuple[Any, list[str]]]] = {}
        async for wf in client.list_workflows("WorkflowType = 'KtbTestWindow'"):
            if wf.status is not WorkflowExecutionStatus.COMPLETED:
                continue
            got = await client.get_workflow_handle(wf.id, run_id=wf.run_id).result()
            runs.setdefault(wf.id, []).append((wf.start_time, [e["event_id"] for e in got]))
        return {
            wid: [i for _, ids in sorted(found, key=lambda r: r[0]) for i in ids]
            for wid, found in runs.items()
        }

    async def _check_windows(self, client: Client) -> None:
        """Every window event in exactly one run of its workflow id, in production order."""
        rep = self.report
        got = await self._window_deliveries(client)
        for wid, want in self._window_expected().items():
            ids = got.get(wid, [])
            missing = set(want) - set(ids)
            rep.missing += [f"{wid} event {i}" for i in sorted(missing)]
            rep.duplicated += [f"{wid} event {i}" for i, n in Counter(ids).items() if n > 1]
            if not missing and ids != want:
                rep.violations.append(f"{wid}: events delivered as {ids}, not in offset order")

    async def _check_events(self, outcomes: str, compensations: str) -> None:
        rep = self.report
        expected: Counter[tuple[str, str]] = Counter()
        for oid, token in self.expected_tokens.items():
            wid = f"order-{oid}"
            if token == "tok_declined":
                expected[(wid, COMPENSATED)] += 1
                expected[(wid, f"{STEP_COMPENSATED}:reserve_inventory")] += 1
            else:
                expected[(wid, COMPLETED)] += 1
        seen: dict[str, bytes] = {}
        got: Counter[tuple[str, str]] = Counter()
        for topic in (outcomes, compensations):
            for record in await self._read_all(topic, 3):
                event = decode_record(self.catalog, value=record.value, headers=record.headers)
                if event.id in seen:
                    if seen[event.id] != record.value:
                        rep.violations.append(f"ce_id {event.id} republished with other data")
                    continue
                seen[event.id] = record.value
                label = event.type
                if event.type == STEP_COMPENSATED:
                    label = f"{event.type}:{event.data['step']}"
                got[(event.correlation_id or "", label)] += 1
        for item, n in expected.items():
            if got[item] != n:
                rep.violations.append(f"{item[0]}: {got[item]} distinct {item[1]} events, want {n}")
        extra = set(got) - set(expected)
        if extra:
            rep.violations.append(f"{len(extra)} unexpected events, e.g. {sorted(extra)[:3]}")

    async def _check_dlq(self) -> None:
        rep = self.report
        letters = await self._read_all(ORDERS + ".dlq", 1)
        # Dead-lettering is at-least-once like everything else: a record dead-lettered
        # and then redelivered (its offset not yet committed) is dead-lettered again.
        # Its original coordinates identify it, as ce_id identifies an outcome event.
        unique: dict[tuple[bytes, bytes, bytes], Any] = {}
        for r in letters:
            h = dict(r.headers)
            coords = (h.get(ORIGINAL_TOPIC, b""), h.get(ORIGINAL_PARTITION, b""),
                      h.get(ORIGINAL_OFFSET, b""))  # fmt: skip
            if coords in unique and unique[coords].value != r.value:
                rep.violations.append(f"DLQ has different records for {coords}")
            unique.setdefault(coords, r)
        rep.dlq = len(unique)
        rep.dlq_redelivered = len(letters) - len(unique)
        letters = list(unique.values())
        values = Counter(r.value for r in letters)
        want = Counter(self.poison_values)
        missing = want - values
        extra = values - want
        if missing:
            rep.violations.append(f"{sum(missing.values())} poison records missing from the DLQ")
        if extra:
            rep.violations.append(f"{sum(extra.values())} records in the DLQ that are not poison")
        for r in letters:
            names = {k for k, _ in r.headers}
            if not names >= ERROR_HEADERS:
                rep.violations.append(f"DLQ offset {r.offset} lacks {ERROR_HEADERS - names}")

    async def _check_parked(self) -> None:
        """Every parked key's sequence went to orders.parked (its signals' order is checked
        with the other sequence keys), and nothing is parked any more."""
        rep = self.report
        records = await self._read_all(ORDERS + ".parked", self.config.partitions)
        parked = {(r.partition, dict(r.headers).get(ORIGINAL_OFFSET)) for r in records}
        rep.parked = len(parked)
        keys = {r.key.decode() for r in records if r.key is not None}
        if not keys >= set(self.parked_keys):
            rep.violations.append(f"keys never parked: {sorted(set(self.parked_keys) - keys)}")
        async with read_parking(self.settings) as state:
            left = [b for b in state.blocks(ORDERS) if b.key.decode() in self.parked_keys]
        if left:
            rep.violations.append(f"{len(left)} parked keys still blocked at the end")


class DataDirInUse(ValueError):
    """The data directory given to a run holds an earlier run's state."""


def require_empty(path: Path) -> None:
    """A run's directory must be new or empty: an earlier run's Kafka logs, Temporal
    database and services' databases in it would be read as this run's (its orders have
    the same ids), and the checks would fail on that run's outcomes."""
    if path.exists() and any(path.iterdir()):
        raise DataDirInUse(
            f"the data directory {path} holds an earlier run's state (Kafka, Temporal, the "
            "services' databases): give a new or empty directory"
        )


async def run_chaos(config: ChaosConfig, log: Callable[[str], None] = print) -> Report:
    """Run one chaos experiment and return its report."""
    return await Chaos(config, log).run()


def main_sync(config: ChaosConfig) -> int:
    """Run, print the table, and return the process exit code."""
    # The harness's own clients see every injected outage; their retries are not news.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        report = asyncio.run(run_chaos(config))
    except DataDirInUse as e:
        print(f"chaos: {e}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if report.ok else 1
