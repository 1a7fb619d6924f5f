"""Route options priority, fairness_key, fairness_weight and start_delay: validation at
start-up and in ``routes check``, resolution per event, what a start sends to Temporal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from temporalio.common import Priority, WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from bridge.codec import SchemaCatalog
from bridge.envelope import Event
from bridge.errors import ConfigError, RouteError
from bridge.routes import Action, ActionKind, Router, RoutesConfig, check_routes
from bridge.scheduling import (
    Schedule,
    StartDelay,
    parse_duration,
    parse_priority,
    parse_start_delay,
)
from bridge.temporal.requests import schedule_options, start_call
from tests.support import order_data

PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
START = {
    "name": "start-order", "topic": "orders", "type": PLACED, "action": "start",
    "workflow": "OrderFulfillment", "task_queue": "orders", "workflow_id": "order-{data.order_id}",
}  # fmt: skip
NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


def event(**data: Any) -> Event:
    return Event(
        id="evt-1", type=PLACED, source="s", data={**order_data("o-1"), **data},
        topic="orders", key="o-1", tenant_id="acme",
    )  # fmt: skip


def routed(options: dict[str, Any], **data: Any) -> Action:
    action = Router(RoutesConfig.parse({"routes": [{**START, **options}]})).route(event(**data))
    assert action is not None
    return action


def refused(route: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        Router(RoutesConfig.parse({"routes": [route]}))
    return caught.value.message


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400),
        ("2d", 172800), ("PT5M", 300), ("P1DT2H", 93600), ("PT0.5S", 0.5), ("P1W", 604800),
    ],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "five minutes", "-5m", "P", "PT", "P1Y", "P1M", "5M"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_start_delay_is_a_duration_or_a_time_with_an_offset() -> None:
    assert parse_start_delay("5m") == StartDelay(after=timedelta(minutes=5))
    at = parse_start_delay("2026-12-03T08:30:00+01:00")
    assert at.at == datetime(2026, 12, 3, 7, 30, tzinfo=UTC)
    assert parse_start_delay("2026-12-03T07:00:10Z").from_now(NOW) == timedelta(seconds=10)
    # A decoded Avro timestamp (timestamp-millis) is a datetime already.
    assert parse_start_delay(NOW).at == NOW
    for bad in ("2026-12-03T07:00:00", "tomorrow", 30, datetime(2026, 12, 3)):
        with pytest.raises(ValueError):
            parse_start_delay(bad)


def test_a_time_in_the_past_starts_now() -> None:
    past = parse_start_delay("2026-12-03T06:00:00Z")
    assert past.from_now(NOW) == timedelta(0)
    later = StartDelay(at=NOW + timedelta(minutes=1))
    assert later.from_now(NOW + timedelta(seconds=20)) == timedelta(seconds=40)


def test_priority_is_a_positive_integer() -> None:
    assert parse_priority(1) == 1
    assert parse_priority(" 4 ") == 4
    for bad in (0, -1, "0", "high", 2.0, "2.5", True, None):
        with pytest.raises(ValueError):
            parse_priority(bad)


# --- resolution per event -------------------------------------------------------------


def test_options_resolve_from_the_event() -> None:
    options = {
        "priority": "{data.quantity}",
        "fairness_key": "{tenant}",
        "fairness_weight": 2.5,
        "start_delay": "{data.not_before}",
    }
    action = routed(options, quantity=2, not_before="2026-12-03T07:05:00Z")
    assert action.schedule == Schedule(
        priority=2,
        fairness_key="acme",
        fairness_weight=2.5,
        start_delay=StartDelay(at=datetime(2026, 12, 3, 7, 5, tzinfo=UTC)),
    )
    # A number in a string, and a template with literal text, resolve too.
    assert routed({"priority": "{data.level}"}, level="1").schedule == Schedule(priority=1)
    tiered = routed({"fairness_key": "tier-{data.currency}"})
    assert tiered.schedule == Schedule(fairness_key="tier-EUR")


def test_fixed_options_are_resolved_once_and_routes_without_them_have_none() -> None:
    fixed = routed({"priority": 2, "start_delay": "PT30S"})
    assert fixed.schedule == Schedule(
        priority=2, start_delay=StartDelay(after=timedelta(seconds=30))
    )
    assert routed({}).schedule is None


@pytest.mark.parametrize(
    ("options", "data", "says"),
    [
        ({"priority": "{data.level}"}, {"level": "urgent"}, "field priority"),
        ({"priority": "{data.level}"}, {"level": 0}, "not a positive integer"),
        ({"start_delay": "{data.when}"}, {"when": "soon"}, "field start_delay"),
        ({"start_delay": "{data.when}"}, {"when": "2026-12-03 07:00"}, "no UTC offset"),
        ({"fairness_key": "{data.who}"}, {"who": "x" * 65}, "over 64 bytes"),
        ({"priority": "{data.level}"}, {}, "no value for field 'data.level'"),
    ],
)
def test_values_that_do_not_resolve_are_route_errors(
    options: dict[str, Any], data: dict[str, Any], says: str
) -> None:
    router = Router(RoutesConfig.parse({"routes": [{**START, **options}]}))
    with pytest.raises(RouteError) as caught:
        router.route(event(**data))
    assert "route 'start-order'" in caught.value.message and says in caught.value.message


# --- validation at start-up -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"priority": 0}, "field priority: Value error, must be a positive integer"),
        ({"priority": 1.5}, "field priority"),
        ({"priority": True}, "field priority"),
        ({"fairness_weight": 0}, "field fairness_weight"),
        ({"fairness_weight": 2000}, "field fairness_weight"),
        ({"fairness_weight": 2}, "fairness_weight needs a fairness_key"),
        ({"rate_limit": {"per_second": 0}}, "field rate_limit.per_second"),
        ({"rate_limit": {"per_second": 5, "burst": 0}}, "field rate_limit.burst"),
        ({"rate_limit": {"per_second": 5, "size": 3}}, "field rate_limit.size"),
    ],
)
def test_bad_option_values_are_refused_naming_route_and_field(
    options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        RoutesConfig.parse({"routes": [{**START, **options}]})
    assert "route 'start-order'" in caught.value.message and says in caught.value.message


def test_fixed_values_that_do_not_resolve_are_refused_at_start_up() -> None:
    assert "field priority ('high')" in refused({**START, "priority": "high"})
    assert "field start_delay ('soon')" in refused({**START, "start_delay": "soon"})
    assert "route 'start-order'" in refused({**START, "start_delay": "{data.x!r}"})


def test_scheduling_applies_only_to_actions_that_start_a_workflow() -> None:
    signal = {
        "name": "confirm", "topic": "payments", "type": CONFIRMED, "action": "signal",
        "workflow_id": "order-{data.order_id}", "signal": "payment_confirmed",
    }  # fmt: skip
    for option, value in (("priority", 1), ("fairness_key", "{tenant}"), ("start_delay", "5m")):
        with pytest.raises(ConfigError) as caught:
            RoutesConfig.parse({"routes": [{**signal, option: value}]})
        assert f"route 'confirm', field {option}" in caught.value.message
        assert "not signal" in caught.value.message
    update = {**START, "action": "update_with_start", "update": "add"}
    with pytest.raises(ConfigError) as caught:
        RoutesConfig.parse({"routes": [{**update, "start_delay": "5m"}]})
    assert "field start_delay" in caught.value.message and "update-with-start" in (
        caught.value.message
    )
    # Priority goes with every start, an update-with-start's included; a rate limit
    # with any action.
    RoutesConfig.parse(
        {"routes": [{**update, "priority": 1}, {**signal, "rate_limit": {"per_second": 1}}]}
    )


def test_routes_check_names_unknown_fields(catalog: SchemaCatalog) -> None:
    options = {
        "priority": "{data.level}",
        "fairness_key": "{tenant}-{data.region}",
        "start_delay": "{data.currency}",
    }
    config = RoutesConfig.parse({"routes": [{**START, **options}]})
    problems = [str(p) for p in check_routes(config, catalog)]
    assert problems == [
        "route 'start-order', field priority: 'data.level' is not a field of the event's schema",
        "route 'start-order', field fairness_key: 'data.region' is not a field of the event's "
        "schema",
    ]


# --- what a start sends ---------------------------------------------------------------


def test_a_start_sends_priority_fairness_and_what_is_left_of_the_delay() -> None:
    action = Action(
        kind=ActionKind.START, route="r", workflow_id="w", event_id="e",
        schedule=Schedule(
            priority=1, fairness_key="acme", fairness_weight=3.0,
            start_delay=StartDelay(at=NOW + timedelta(minutes=5)),
        ),
    )  # fmt: skip
    assert schedule_options(action, NOW + timedelta(minutes=1)) == {
        "priority": Priority(priority_key=1, fairness_key="acme", fairness_weight=3.0),
        "start_delay": timedelta(minutes=4),
    }
    delayed = Action(
        kind=ActionKind.START, route="r", workflow_id="w", event_id="e",
        schedule=Schedule(start_delay=StartDelay(after=timedelta(seconds=30))),
    )  # fmt: skip
    assert schedule_options(delayed, NOW) == {"start_delay": timedelta(seconds=30)}
    other = timezone(timedelta(hours=2))
    assert schedule_options(delayed, NOW.astimezone(other)) == {
        "start_delay": timedelta(seconds=30)
    }
    plain = Action(kind=ActionKind.START, route="r", workflow_id="w", event_id="e")
    assert schedule_options(plain, NOW) == {}


def test_a_start_call_carries_the_routes_policies_memo_and_start_signal() -> None:
    route = {
        **START, "id_reuse_policy": "allow_duplicate", "id_conflict_policy": "fail",
        "memo": {"channel": "web"}, "search_attributes": {"CustomerId": "{data.customer_id}"},
        "priority": 2,
    }  # fmt: skip
    call = start_call(routed(route), event(), "started")
    assert call["workflow"] == "OrderFulfillment" and call["task_queue"] == "orders"
    assert call["id"] == "acme:order-o-1" and call["args"] == [event().data]
    assert call["id_reuse_policy"] is WorkflowIDReusePolicy.ALLOW_DUPLICATE
    assert call["id_conflict_policy"] is WorkflowIDConflictPolicy.FAIL
    assert call["memo"]["channel"] == "web"
    memo = call["memo"]["ktb"]
    assert (memo["event_id"], memo["tenant_id"], memo["outcome"]) == ("evt-1", "acme", "started")
    pairs = {pair.key.name: pair.value for pair in call["search_attributes"]}
    assert pairs["CustomerId"] == event().data["customer_id"] and pairs["KtbTenantId"] == "acme"
    assert call["priority"] == Priority(priority_key=2)
    assert "start_signal" not in call

    signalled = {**START, "action": "signal_with_start", "signal": "paid", "args": "data"}
    call = start_call(routed(signalled), event(), "signalled")
    (message,) = call["start_signal_args"]
    assert call["start_signal"] == "paid" and message["payload"] == event().data
    assert (message["event_id"], message["tenant_id"]) == ("evt-1", "acme")
    assert call["memo"]["ktb"]["outcome"] == "signalled"
