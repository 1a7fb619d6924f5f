"""The order-fulfilment flows end to end: events on Kafka → bridge → saga → events on Kafka.

Real Kafka, real Temporal, the real example routes and the real service
activities with their SQLite state; the outcome and compensation events are read
back from Kafka and the notifications service's records checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from bridge.dlq.publisher import ERROR_TYPE
from bridge.sdk.egress import OUTCOME, PUBLISH_ACTIVITY, Published, Publisher, PublishRequest
from services.inventory.server import create_app as inventory_app
from services.notifications.server import create_app as notifications_app
from services.orders.server import create_app as orders_app
from services.payments.server import create_app as payments_app
from services.shipping.server import create_app as shipping_app
from tests.integration.shop import Shop, running_shop
from tests.support import eventually, order_data, workflow_result

PLACED = "com.example.order.placed"
CANCELLED = "com.example.order.cancelled"
CONFIRMED = "com.example.payment.confirmed"
COMPLETED = "com.example.order.completed"
COMPENSATED = "com.example.order.compensated"
FAILED = "com.example.order.failed"
STEP_COMPENSATED = "com.example.order.step_compensated"


@pytest.fixture
def shop_settings(settings, tmp_path):
    return settings.model_copy(update={"data_dir": tmp_path})


@pytest.fixture
async def shop(shop_settings, catalog, client, topics, uid):
    async with running_shop(shop_settings, catalog, client, topics, uid) as running:
        yield running


async def place(services, shop: Shop, order_id: str, token: str = "tok_visa") -> str:
    return await services.produce(
        shop.topics["orders"], PLACED, order_data(order_id, token), key=order_id
    )


async def get_json(app: Any, path: str) -> Any:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://service"
    ) as http:
        response = await http.get(path)
        response.raise_for_status()
        return response.json()


async def test_happy_path(services, shop: Shop, client, uid):
    order_id = f"{uid}-happy"
    placed = await place(services, shop, order_id)
    [outcome] = await shop.outcomes(order_id)
    assert outcome.type == COMPLETED
    assert outcome.causation_id == placed
    assert outcome.correlation_id == shop.workflow_id(order_id)
    assert outcome.data["reservation_id"] == f"res-{order_id}"
    assert outcome.data["payment_id"] == f"pay-{order_id}"
    assert outcome.data["shipment_id"] == f"shp-{order_id}"
    assert shop.collector.of(shop.topics["compensations"], order_id) == []
    result = await workflow_result(client, shop.workflow_id(order_id))
    assert result["status"] == "completed"
    assert result["outcome_event_id"] == outcome.id

    order = await get_json(orders_app(shop.stores["orders"]), f"/orders/{order_id}")
    assert order["status"] == "completed"
    assert order["workflow_id"] == shop.workflow_id(order_id)
    reservation = await get_json(
        inventory_app(shop.stores["inventory"]), f"/reservations/{order_id}"
    )
    assert reservation["status"] == "reserved"
    assert reservation["items"] == [{"sku": "sku-1", "quantity": 1}]
    payment = await get_json(payments_app(shop.stores["payments"]), f"/payments/{order_id}")
    assert payment["payment"]["status"] == "captured"
    assert [a["result"] for a in payment["attempts"]] == ["captured"]
    shipment = await get_json(shipping_app(shop.stores["shipping"]), f"/shipments/{order_id}")
    assert shipment["shipment_id"] == f"shp-{order_id}"

    async def notified() -> list[dict[str, Any]]:
        found = await get_json(
            notifications_app(shop.stores["notifications"]), f"/notifications?order_id={order_id}"
        )
        assert len(found) == 1
        return found

    [note] = await eventually(notified, timeout=90)
    assert note["ce_id"] == outcome.id
    assert note["type"] == COMPLETED
    assert note["deliveries"] == 1


async def test_transient_payment_failures_are_retried_to_success(services, shop: Shop, uid):
    order_id = f"{uid}-flaky"
    await place(services, shop, order_id, "tok_flaky")
    [outcome] = await shop.outcomes(order_id)
    assert outcome.type == COMPLETED
    attempts = await shop.stores["payments"].rows(
        "SELECT attempt, result FROM attempts WHERE order_id = ? ORDER BY attempt", order_id
    )
    assert attempts == [
        {"attempt": 1, "result": "network_error"},
        {"attempt": 2, "result": "network_error"},
        {"attempt": 3, "result": "captured"},
    ]


async def test_declined_payment_is_compensated(services, shop: Shop, uid):
    order_id = f"{uid}-declined"
    placed = await place(services, shop, order_id, "tok_declined")
    [outcome] = await shop.outcomes(order_id)
    assert outcome.type == COMPENSATED
    assert outcome.causation_id == placed
    assert outcome.data["step"] == "charge_payment"
    assert outcome.data["reason"].startswith("CardDeclined: ")
    assert outcome.data["compensated_steps"] == ["reserve_inventory"]
    [step] = await shop.compensations(order_id, 1)
    assert step.type == STEP_COMPENSATED
    assert step.causation_id == placed
    assert step.correlation_id == shop.workflow_id(order_id)
    assert step.data["detail"] == f"released reservation res-{order_id} (1 x sku-1)"
    reservation = await shop.stores["inventory"].row(
        "SELECT status FROM reservations WHERE order_id = ?", order_id
    )
    assert reservation == {"status": "released"}
    stock = await shop.stores["inventory"].row("SELECT available FROM stock WHERE sku = 'sku-1'")
    assert stock == {"available": shop.config.default_stock}
    attempts = await shop.stores["payments"].rows(
        "SELECT result FROM attempts WHERE order_id = ?", order_id
    )
    assert attempts == [{"result": "card_declined"}]


async def _awaiting_confirmation(client, workflow_id: str) -> None:
    async def waiting() -> bool:
        try:
            progress = await client.get_workflow_handle(workflow_id).query("ktb_progress")
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return False  # the bridge has not started it yet
            raise
        return progress["step"] == "awaiting_payment_confirmation"

    await eventually(waiting, timeout=90)


async def test_cancel_event_mid_flight_compensates(services, shop: Shop, client, uid):
    order_id = f"{uid}-cancel"
    await place(services, shop, order_id, "tok_async")
    await _awaiting_confirmation(client, shop.workflow_id(order_id))
    cancel = await services.produce(
        shop.topics["orders"],
        CANCELLED,
        {"order_id": order_id, "reason": "found it cheaper"},
        key=order_id,
    )
    [outcome] = await shop.outcomes(order_id)
    assert outcome.type == COMPENSATED
    assert outcome.causation_id == cancel
    assert outcome.data["reason"] == "cancelled: found it cheaper"
    assert outcome.data["compensated_steps"] == ["charge_payment", "reserve_inventory"]
    steps = await shop.compensations(order_id, 2)
    assert [s.data["step"] for s in steps] == ["charge_payment", "reserve_inventory"]
    assert {s.causation_id for s in steps} == {cancel}
    assert steps[0].data["detail"] == f"voided pending pay-{order_id} (2500 EUR)"
    payment = await shop.stores["payments"].row(
        "SELECT status FROM payments WHERE order_id = ?", order_id
    )
    assert payment == {"status": "voided"}
    progress = await client.get_workflow_handle(shop.workflow_id(order_id)).query("ktb_progress")
    assert [c["step"] for c in progress["compensations"]] == [
        "charge_payment",
        "reserve_inventory",
    ]


async def test_payment_confirmed_asynchronously_resumes_the_order(
    services, shop: Shop, client, uid
):
    order_id = f"{uid}-async"
    placed = await place(services, shop, order_id, "tok_async")
    await _awaiting_confirmation(client, shop.workflow_id(order_id))
    await services.produce(
        shop.topics["payments"],
        CONFIRMED,
        {"order_id": order_id, "payment_id": "psp-77", "amount_cents": 2500},
        key=order_id,
    )
    [outcome] = await shop.outcomes(order_id)
    assert outcome.type == COMPLETED
    assert outcome.causation_id == placed
    payment = await shop.stores["payments"].row(
        "SELECT status, processor_ref FROM payments WHERE order_id = ?", order_id
    )
    assert payment == {"status": "captured", "processor_ref": "psp-77"}


async def test_confirmation_for_unknown_order_is_dead_lettered(services, shop: Shop, uid):
    order_id = f"{uid}-nobody"
    event_id = await services.produce(
        shop.topics["payments"],
        CONFIRMED,
        {"order_id": order_id, "payment_id": "psp-1", "amount_cents": 100},
        key=order_id,
    )
    [letter] = await services.read(f"{shop.topics['payments']}.dlq", 1)
    headers = dict(letter.headers)
    assert headers["ce_id"].decode() == event_id
    assert headers[ERROR_TYPE] == b"action_rejected"


async def test_cancel_for_unknown_order_starts_it_closed(services, shop: Shop, client, uid):
    order_id = f"{uid}-early"
    cancel = await services.produce(
        shop.topics["orders"],
        CANCELLED,
        {"order_id": order_id, "reason": "duplicate order"},
        key=order_id,
    )
    [outcome] = await shop.outcomes(order_id)
    assert outcome.type == FAILED
    assert outcome.causation_id == cancel
    assert outcome.data == {
        "order_id": order_id,
        "customer_id": None,
        "step": "start",
        "reason": "cancelled: duplicate order",
    }
    # The order placed late finds its workflow closed: a duplicate, nothing runs.
    await place(services, shop, order_id)

    async def placed_handled() -> bool:
        ends = await services.end_offsets(shop.topics["orders"])
        return await services.committed(shop.topics["orders"]) == ends

    await eventually(placed_handled, timeout=90)
    assert len(shop.collector.of(shop.topics["outcomes"], order_id)) == 1
    reservations = await shop.stores["inventory"].rows(
        "SELECT * FROM reservations WHERE order_id = ?", order_id
    )
    assert reservations == []


def fails_once_after_publishing(publisher: Publisher) -> Callable[..., Any]:
    """``ktb.publish`` that publishes, then fails its first attempt at an outcome."""

    @activity.defn(name=PUBLISH_ACTIVITY)
    async def publish(req: PublishRequest) -> Published:
        published = await publisher.publish(req)
        if req.kind == OUTCOME and activity.info().attempt == 1:
            raise RuntimeError("lost the acknowledgement")
        return published

    return publish


async def test_retried_publish_repeats_the_ce_id_and_is_notified_once(
    services, shop_settings, catalog, client, topics, uid
):
    order_id = f"{uid}-retry"
    async with running_shop(
        shop_settings, catalog, client, topics, uid, publish=fails_once_after_publishing
    ) as shop:
        await place(services, shop, order_id)
        first, second = await shop.outcomes(order_id, 2)
        assert first.id == second.id
        assert first.type == second.type == COMPLETED
        assert first.offset != second.offset

        async def delivered_twice() -> list[dict[str, Any]]:
            rows = await shop.notifications(order_id)
            assert len(rows) == 1
            assert rows[0]["deliveries"] == 2
            return rows

        [note] = await eventually(delivered_twice, timeout=90)
        assert note["ce_id"] == first.id
