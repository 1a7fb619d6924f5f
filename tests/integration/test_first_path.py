"""The first end-to-end path: order.placed on Kafka → workflow → order.completed on Kafka."""

from __future__ import annotations

from bridge.codec import SchemaCatalog
from services.config import ServicesConfig
from services.orders.workflows import OrderFulfillment
from tests.integration.shop import all_activities, open_stores
from tests.support import (
    order_data,
    routes_config,
    running_bridge,
    running_worker,
    workflow_result,
)


async def test_order_placed_to_completed(
    services, topics, settings, catalog: SchemaCatalog, client, uid, tmp_path
):
    task_queue = f"orders-{uid}"
    # One worker hosts the workflow and every service activity.
    stores = open_stores(settings.model_copy(update={"data_dir": tmp_path}))
    activities = all_activities(ServicesConfig(), stores)
    config = routes_config(
        [
            {
                "name": "start-order",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "action": "start",
                "workflow": "OrderFulfillment",
                "task_queue": task_queue,
                "workflow_id": f"order-{uid}-{{data.order_id}}",
                "memo": {
                    "outcome_topic": topics["outcomes"],
                    "inventory_queue": task_queue,
                    "payments_queue": task_queue,
                    "shipping_queue": task_queue,
                },
            }
        ]
    )
    async with (
        running_worker(settings, catalog, client, task_queue, [OrderFulfillment], activities),
        running_bridge(settings, catalog, client, config),
    ):
        event_id = await services.produce(
            topics["orders"], "com.example.order.placed", order_data("o-1"), key="o-1"
        )
        result = await workflow_result(client, f"order-{uid}-o-1")
    assert result["status"] == "completed"
    records = await services.read(topics["outcomes"], 1)
    assert len(records) == 1
    assert records[0].key == b"o-1"
    event = services.decode(records[0])
    assert event.causation_id == event_id
    assert event.type == "com.example.order.completed"
    assert event.correlation_id == f"order-{uid}-o-1"
    assert event.data["order_id"] == "o-1"
