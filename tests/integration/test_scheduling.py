"""Route options against real Kafka and Temporal: priority, fairness and start delay reach
the started workflow (its description shows them), values that do not resolve are dead
letters that say why, and a rate-limited route loses nothing while it waits.

The order schema has no priority or start-time field: the tests read the priority from
an item's quantity and the start delay from the payment token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from bridge.dlq.publisher import ERROR_MESSAGE, ERROR_TYPE
from bridge.kafka import ensure_topics
from bridge.observability.metrics import Metrics
from tests.support import (
    count_is,
    eventually,
    order_data,
    payment,
    routes_config,
    running_bridge,
    running_worker,
)
from tests.workflows import Recorder

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
TENANT = "acme"


def placed(order_id: str, priority: int, start: str) -> dict[str, Any]:
    data = order_data(order_id, token=start)
    data["items"][0]["quantity"] = priority
    return data


async def described(client: Client, workflow_id: str) -> WorkflowExecutionDescription:
    """The workflow's description, once the bridge has started it."""

    async def found() -> WorkflowExecutionDescription | None:
        try:
            return await client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return None
            raise

    return await eventually(found)


def delay_of(description: WorkflowExecutionDescription) -> timedelta:
    info = description.raw_description.workflow_execution_info
    return info.execution_time.ToDatetime() - info.start_time.ToDatetime()


async def test_priority_fairness_and_start_delay_reach_the_started_workflow(
    services, settings, catalog, client, uid
):
    topic = f"sched-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    starting = {"topic": topic, "workflow": "KtbTestRecorder", "task_queue": f"tq-{uid}"}
    config = routes_config(
        [
            {
                "name": f"start-{uid}", "type": PLACED, "action": "start", **starting,
                "workflow_id": f"wf-{uid}-{{data.order_id}}",
                "priority": "{data.items.0.quantity}", "start_delay": "{data.payment_token}",
                "fairness_key": "{tenant}", "fairness_weight": 2.5,
            },
            {
                "name": f"sws-{uid}", "type": CONFIRMED, "action": "signal_with_start",
                "when": "data.payment_id.startsWith('sws')", "signal": "note", **starting,
                "workflow_id": f"sws-{uid}-{{data.order_id}}",
                "priority": 1, "start_delay": "PT30M",
            },
            {
                "name": f"add-{uid}", "type": CONFIRMED, "action": "update_with_start",
                "when": "data.payment_id.startsWith('add')", "update": "add", **starting,
                "workflow_id": f"add-{uid}-{{data.order_id}}",
                "priority": "{data.amount_cents}",
            },
        ]
    )  # fmt: skip
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    produce = [
        placed("later", 1, "PT1H"),
        placed("at", 5, at.isoformat()),
        placed("past", 2, "2020-01-01T00:00:00Z"),
    ]
    for data in produce:
        await services.produce(topic, PLACED, data, key=data["order_id"], tenant=TENANT)
    await services.produce(topic, CONFIRMED, payment("s", "sws-1", 7), key="s", tenant=TENANT)
    await services.produce(topic, CONFIRMED, payment("u", "add-1", 4), key="u", tenant=TENANT)
    async with (
        running_worker(settings, catalog, client, f"tq-{uid}", [Recorder]),
        running_bridge(settings, catalog, client, config),
    ):
        later = await described(client, f"{TENANT}:wf-{uid}-later")
        dated = await described(client, f"{TENANT}:wf-{uid}-at")
        past = await described(client, f"{TENANT}:wf-{uid}-past")
        sws = await described(client, f"{TENANT}:sws-{uid}-s")
        add = await described(client, f"{TENANT}:add-{uid}-u")

    priority = later.raw_description.workflow_execution_info.priority
    assert (priority.priority_key, priority.fairness_key) == (1, TENANT)
    assert priority.fairness_weight == 2.5
    assert delay_of(later) == timedelta(hours=1)
    # A time: the delay is what was left of it when the start was sent.
    dated_info = dated.raw_description.workflow_execution_info
    assert dated_info.priority.priority_key == 5
    assert abs(dated_info.execution_time.ToDatetime(UTC) - at) < timedelta(seconds=30)
    # A time already passed starts the workflow at once.
    assert past.raw_description.workflow_execution_info.priority.priority_key == 2
    assert delay_of(past) == timedelta(0)
    # Signal-with-start carries both; update-with-start its priority.
    assert sws.raw_description.workflow_execution_info.priority.priority_key == 1
    assert delay_of(sws) == timedelta(minutes=30)
    assert add.raw_description.workflow_execution_info.priority.priority_key == 4


async def test_a_priority_or_start_delay_that_does_not_resolve_is_a_dead_letter(
    services, settings, catalog, client, uid
):
    topic = f"sched-bad-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(
        [
            {
                "name": f"start-{uid}", "topic": topic, "type": PLACED, "action": "start",
                "workflow": "KtbTestNoop", "task_queue": f"tq-{uid}",
                "workflow_id": f"wf-{uid}-{{data.order_id}}",
                "priority": "{data.items.0.quantity}", "start_delay": "{data.payment_token}",
            }
        ]
    )  # fmt: skip
    await services.produce(topic, PLACED, placed("zero", 0, "5m"), key="zero")
    await services.produce(topic, PLACED, placed("soon", 1, "soon"), key="soon")
    await services.produce(topic, PLACED, placed("good", 3, "1h"), key="good")
    async with running_bridge(settings, catalog, client, config):
        letters = await services.read(f"{topic}.dlq", 2)
        good = await described(client, f"wf-{uid}-good")
    headers = [dict(letter.headers) for letter in letters]
    assert [h[ERROR_TYPE] for h in headers] == [b"route_error", b"route_error"]
    messages = sorted(h[ERROR_MESSAGE].decode() for h in headers)  # keys act concurrently
    assert messages == [
        f"route 'start-{uid}': field priority ('{{data.items.0.quantity}}'): 0 is not a "
        "positive integer (1 is the highest priority)",
        f"route 'start-{uid}': field start_delay ('{{data.payment_token}}'): 'soon' is "
        "neither a duration (30s, 5m, 1h30m, PT5M) nor an RFC 3339 time",
    ]
    assert good.raw_description.workflow_execution_info.priority.priority_key == 3


async def test_a_rate_limited_route_waits_and_loses_nothing(
    services, settings, catalog, client, uid
):
    topic = f"limited-{uid}"
    await ensure_topics(settings, {topic: 2, f"{topic}.dlq": 1})
    route = f"start-{uid}"
    config = routes_config(
        [
            {
                "name": route, "topic": topic, "type": PLACED, "action": "start",
                "workflow": "KtbTestNoop", "task_queue": f"tq-{uid}",
                "workflow_id": f"wf-{uid}-{{data.order_id}}",
                "rate_limit": {"per_second": 5, "burst": 5},
            }
        ]
    )  # fmt: skip
    for n in range(20):
        await services.produce(topic, PLACED, order_data(f"o-{n}"), key=f"o-{n}")
    metrics = Metrics()

    def sample(name: str, labels: dict[str, str]) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    async with running_bridge(settings, catalog, client, config, metrics=metrics):

        async def all_committed() -> bool:
            return sum((await services.committed(topic)).values()) == 20

        await eventually(all_committed, timeout=60)
    started = sample("ktb_events_routed_total", {"route": route, "action": "start",
                                                 "result": "started"})  # fmt: skip
    assert started == 20
    assert sample("ktb_rate_limited_seconds_total", {"route": route}) > 0

    assert await eventually(lambda: count_is(client, f"KtbRoute = '{route}'", 20))
