"""A worker killed with SIGKILL mid-saga and restarted: every saga still ends, once.

The orders worker (the workflows and the publishing activity) runs as its own OS
process, ``python -m services.orders worker``. It is killed while sagas are in
flight (flaky payments in retry back-off, asynchronous payments waiting for
their confirmation), then started again. Every order must end with exactly one
outcome event id; a republished event may appear twice, but only with the same
``ce_id`` (and the same content).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict

import pytest

from bridge.envelope import Event
from tests.integration.shop import orders_worker_process, running_shop
from tests.support import eventually, order_data, workflow_result

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
TOKENS = ["tok_visa", "tok_flaky", "tok_declined", "tok_async"]
EXPECTED = {
    "tok_visa": "com.example.order.completed",
    "tok_flaky": "com.example.order.completed",
    "tok_declined": "com.example.order.compensated",
    "tok_async": "com.example.order.completed",
}
ORDERS = 12


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


@pytest.mark.slow
async def test_orders_worker_killed_mid_saga(
    services, settings, catalog, client, topics, uid, tmp_path
):
    settings = settings.model_copy(update={"data_dir": tmp_path})
    log = tmp_path / "orders-worker.log"
    orders = {f"{uid}-{n}": TOKENS[n % len(TOKENS)] for n in range(ORDERS)}
    async with running_shop(settings, catalog, client, topics, uid, orders_worker=False) as shop:
        worker = orders_worker_process(settings, shop.config, log)
        try:
            for order_id, token in orders.items():
                await services.produce(
                    topics["orders"], PLACED, order_data(order_id, token), key=order_id
                )

            def finished() -> set[str]:
                return {o for o in orders if shop.collector.of(topics["outcomes"], o)}

            async def some_finished() -> set[str]:
                return finished()

            await eventually(some_finished, timeout=60)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            assert worker.returncode == -signal.SIGKILL
            done_at_kill = finished()
            assert len(done_at_kill) < len(orders), "every saga ended before the kill"

            worker = orders_worker_process(settings, shop.config, log)
            for order_id, token in orders.items():
                if token == "tok_async":
                    await services.produce(
                        topics["payments"],
                        CONFIRMED,
                        {
                            "order_id": order_id,
                            "payment_id": f"psp-{order_id}",
                            "amount_cents": 2500,
                        },
                        key=order_id,
                    )

            async def all_finished() -> bool:
                return finished() == set(orders)

            await eventually(all_finished, timeout=120)
            for order_id, token in orders.items():
                outcomes = shop.collector.of(topics["outcomes"], order_id)
                _assert_same_event_when_repeated(outcomes)
                assert len({e.id for e in outcomes}) == 1, order_id
                assert outcomes[0].type == EXPECTED[token], order_id
                result = await workflow_result(client, shop.workflow_id(order_id))
                assert result["outcome_event_id"] == outcomes[0].id
                steps = shop.collector.of(topics["compensations"], order_id)
                _assert_same_event_when_repeated(steps)
                expected_steps = 1 if token == "tok_declined" else 0
                assert len({e.id for e in steps}) == expected_steps, order_id

            async def notified_once() -> bool:
                rows = await shop.stores["notifications"].rows(
                    "SELECT order_id, COUNT(*) AS n FROM notifications GROUP BY order_id"
                )
                counts = {r["order_id"]: r["n"] for r in rows}
                expected = {o: 2 if t == "tok_declined" else 1 for o, t in orders.items()}
                assert counts == expected
                return True

            await eventually(notified_once)
        finally:
            _stop(worker)
    assert worker.returncode == 0, log.read_text()[-2000:]


def _assert_same_event_when_repeated(events: list[Event]) -> None:
    by_id: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_id[event.id].append(event)
    for copies in by_id.values():
        contents = {(e.type, e.causation_id, json.dumps(e.data, sort_keys=True)) for e in copies}
        assert len(contents) == 1, contents
