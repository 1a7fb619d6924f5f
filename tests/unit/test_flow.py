"""Debounce and batch: the route options, their validation and the window rules (pure)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.flow import (
    Window,
    WindowEvent,
    WindowKind,
    WindowPolicy,
    WindowState,
    WindowTarget,
    collector_id,
    in_offset_order,
    parse_duration,
)
from bridge.routes import ActionKind, Router, RoutesConfig
from bridge.sdk.window import WindowCollector, with_collector
from bridge.tenancy import valid_tenant
from tests.unit.test_routes import START, event


def parse(**options: Any) -> RoutesConfig:
    return RoutesConfig.parse({"routes": [{**START, **options}]}, "routes.yaml")


def refused(**options: Any) -> str:
    with pytest.raises(ConfigError) as err:
        parse(**options)
    return err.value.message


# --- the route options ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1.5h", 5400.0), (3, 3.0), ("0.25 s", 0.25)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["2", "2 days", "", "s", True, None])
def test_what_is_not_a_duration(text: Any) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_a_debounced_route_builds_a_windowed_start() -> None:
    router = Router(parse(debounce={"period": "2s", "max_wait": "30s"}))
    action = router.route(event())
    assert action is not None
    assert action.kind is ActionKind.START
    assert action.window == WindowPolicy(WindowKind.DEBOUNCE, max_wait_s=30.0, period_s=2.0)
    assert action.workflow_id == "acme:order-o-1"
    assert action.message[0]["event_id"] == "evt-1"
    assert action.message[0]["tenant_id"] == "acme"


def test_a_batched_route_builds_a_windowed_start() -> None:
    router = Router(parse(batch={"max_events": 100, "max_wait": "5s", "dedupe_for": "10m"}))
    action = router.route(event())
    assert action is not None
    assert action.window == WindowPolicy(
        WindowKind.BATCH, max_wait_s=5.0, max_events=100, dedupe_for_s=600.0
    )


def test_a_plain_start_has_no_window() -> None:
    action = Router(parse()).route(event())
    assert action is not None
    assert action.window is None
    assert action.message == ()


def test_window_options_survive_a_written_routes_file() -> None:
    config = parse(debounce={"period": "500ms", "max_wait": "1m"})
    again = RoutesConfig.parse(config.model_dump(mode="json", exclude_defaults=True))
    assert again == config


def debounce(period: Any, max_wait: Any = "2s") -> dict[str, Any]:
    return {"debounce": {"period": period, "max_wait": max_wait}}


def batch(max_events: Any = 5, max_wait: Any = "1s", **extra: Any) -> dict[str, Any]:
    return {"batch": {"max_events": max_events, "max_wait": max_wait, **extra}}


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({**debounce("1s"), **batch()}, "(route)", "debounce and batch exclude each other"),
        (debounce("-1s"), "debounce", "period must be more than zero"),
        (debounce("0s"), "debounce", "period must be more than zero"),
        (debounce("3s"), "debounce", "max_wait (2s) is shorter than period (3s)"),
        ({"debounce": {"period": "1s"}}, "debounce.max_wait", "Field required"),
        (debounce("soon"), "debounce.period", "not a duration"),
        (batch(max_events=0), "batch.max_events", "greater than 0"),
        (batch(max_wait="0ms"), "batch", "max_wait must be more than zero"),
        (batch(size=3), "batch.size", "Extra inputs"),
    ],
)
def test_bad_window_options_name_the_route_and_field(
    options: dict[str, Any], field: str, message: str
) -> None:
    text = refused(**options)
    assert f"route 'start-order', field {field}:" in text
    assert message in text


@pytest.mark.parametrize("option", ["debounce", "batch"])
def test_windows_apply_to_start_only(option: str) -> None:
    value = (
        {"period": "1s", "max_wait": "2s"}
        if option == "debounce"
        else {"max_events": 3, "max_wait": "1s"}
    )
    text = refused(action="signal_with_start", signal="note", **{option: value})
    assert "route 'start-order'" in text
    assert f"{option} applies to action start only, not signal_with_start" in text


def test_windows_take_no_scheduling_options() -> None:
    text = refused(priority=2, start_delay="5m", **debounce("1s"))
    assert "route 'start-order'" in text
    assert "debounce does not take priority, start_delay" in text


# --- when a window closes -----------------------------------------------------------------

DEBOUNCE = WindowPolicy(WindowKind.DEBOUNCE, max_wait_s=10.0, period_s=2.0)
BATCH = WindowPolicy(WindowKind.BATCH, max_wait_s=5.0, max_events=3)


def item(
    n: int, policy: WindowPolicy = DEBOUNCE, partition: int | None = 0, offset: int | None = None
) -> WindowEvent:
    return WindowEvent(
        message={"event_id": f"e{n}", "payload": n},
        target=WindowTarget("Digest", "q", "digest-1", "digest"),
        policy=policy,
        topic="t",
        partition=partition,
        offset=n if offset is None else offset,
    )


def test_debounce_closes_a_period_after_the_last_event() -> None:
    window = Window()
    assert window.closes_at() is None
    assert not window.due(100.0)
    window.add(item(1), 100.0)
    assert window.closes_at() == 102.0
    window.add(item(2), 101.5)
    assert window.closes_at() == 103.5
    assert not window.due(103.4)
    assert window.due(103.5)


def test_debounce_closes_at_max_wait_after_the_first_event_however_busy() -> None:
    window = Window()
    for n, at in enumerate([100.0, 101.0, 102.5, 104.0, 105.5, 107.0, 108.5, 109.9]):
        window.add(item(n), at)
    assert window.closes_at() == 110.0
    assert window.due(110.0)
    assert [e.event_id for e in window.take()] == [f"e{n}" for n in range(8)]
    assert window.pending == []


def test_batch_closes_full_at_once_and_takes_max_events() -> None:
    window = Window()
    for n in range(7):
        window.add(item(n, BATCH), 100.0 + n * 0.1)
    assert window.full()
    assert window.due(100.0)
    assert [e.event_id for e in window.take()] == ["e0", "e1", "e2"]
    assert [e.event_id for e in window.take()] == ["e3", "e4", "e5"]
    assert not window.full()
    assert window.closes_at() == pytest.approx(100.6 + 5.0)
    assert not window.due(105.0)
    assert window.due(105.6)
    assert [e.event_id for e in window.take()] == ["e6"]
    assert window.take() == []


def test_a_batch_not_full_closes_max_wait_after_its_first_event() -> None:
    window = Window()
    window.add(item(1, BATCH), 50.0)
    window.add(item(2, BATCH), 54.0)
    assert window.closes_at() == 55.0
    assert not window.full()


def test_a_repeated_event_id_is_dropped_also_after_its_window_closed() -> None:
    window = Window()
    assert window.add(item(1), 1.0)
    assert not window.add(item(1), 1.5)
    window.take()
    assert not window.add(item(1), 9.0)
    carried = Window(window.state())
    assert not carried.add(item(1), 20.0)
    assert carried.add(item(2), 20.0)


def test_the_state_carries_pending_events_seen_ids_and_dedupe_for() -> None:
    policy = WindowPolicy(WindowKind.DEBOUNCE, max_wait_s=4.0, period_s=1.0, dedupe_for_s=60.0)
    window = Window(WindowState(dedupe_for_s=5.0))
    window.add(item(1, policy), 1.0)
    window.add(item(2, policy), 2.0)
    state = window.state()
    assert [p.event.event_id for p in state.pending] == ["e1", "e2"]
    assert state.seen == ["e1", "e2"]
    assert state.dedupe_for_s == 60.0
    assert Window(state).closes_at() == 3.0


def test_each_partition_keeps_offset_order_in_its_own_places() -> None:
    arrived = [
        item(5, partition=0),
        item(1, partition=1, offset=40),
        item(3, partition=0),
        item(2, partition=1, offset=20),
        item(4, partition=0),
    ]
    ordered = in_offset_order(arrived)
    assert [(e.partition, e.offset) for e in ordered] == [(0, 3), (1, 20), (0, 4), (1, 40), (0, 5)]
    no_position = [item(2, partition=None), item(1, partition=None)]
    assert in_offset_order(no_position) == no_position


# --- ids and registration --------------------------------------------------------------------


def test_collector_ids_are_always_scoped_by_the_tenant() -> None:
    assert collector_id("acme", "acme:digest-c-1") == "acme:ktb.window/acme:digest-c-1"
    assert collector_id("acme", "digest-c-1") == "acme:ktb.window/digest-c-1"
    untenanted = collector_id(None, "acme:digest-c-1")
    assert untenanted == "ktb.window/acme:digest-c-1"
    # No tenant prefix can be read from an untenanted collector's id.
    assert not valid_tenant(untenanted.split(":", 1)[0])


def test_every_worker_gets_the_collector_once() -> None:
    assert with_collector([]) == [WindowCollector]
    assert with_collector([WindowCollector]) == [WindowCollector]
