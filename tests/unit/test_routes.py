"""Routes: validation errors, matching, templates, actions and ``routes check``."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import pytest

from bridge.codec import SchemaCatalog
from bridge.dispatch import DryRun
from bridge.envelope import Event
from bridge.errors import ConfigError, RouteError
from bridge.replay.lookups import FreshIds
from bridge.routes import Action, ActionKind, Router, RoutesConfig, check_routes
from bridge.templates import Template, condition_paths
from tests.support import order_data

PLACED = "com.example.order.placed"


def event(data: dict[str, Any] | None = None, **kw: Any) -> Event:
    base: dict[str, Any] = {
        "id": "evt-1", "type": PLACED, "source": "s", "data": data or order_data("o-1"),
        "topic": "orders", "key": "o-1", "tenant_id": "acme",
    }  # fmt: skip
    base.update(kw)
    return Event(**base)


def config(*routes: dict[str, Any], unmatched: str = "skip") -> RoutesConfig:
    return RoutesConfig.parse({"routes": list(routes), "unmatched": unmatched})


START = {
    "name": "start-order", "topic": "orders", "type": PLACED, "action": "start",
    "workflow": "OrderFulfillment", "task_queue": "orders", "workflow_id": "order-{data.order_id}",
}  # fmt: skip


def test_start_action() -> None:
    action = Router(config(START)).route(event())
    assert action is not None
    assert action.kind is ActionKind.START
    assert action.workflow_id == "acme:order-o-1"
    assert action.args == (order_data("o-1"),)
    assert action.event_id == "evt-1"


def test_workflow_ids_are_scoped_by_the_events_tenant() -> None:
    router = Router(config(START))
    acme = router.route(event())
    globex = router.route(event(tenant_id="globex"))
    nobody = router.route(event(tenant_id=None))
    assert acme is not None and globex is not None and nobody is not None
    assert (acme.workflow_id, globex.workflow_id) == ("acme:order-o-1", "globex:order-o-1")
    assert nobody.workflow_id == "order-o-1"


def test_a_route_can_opt_out_of_tenant_scoped_ids() -> None:
    action = Router(config({**START, "tenant_scoped_ids": False})).route(event())
    assert action is not None and action.workflow_id == "order-o-1"


async def test_a_fresh_replay_suffix_follows_the_tenant_scope() -> None:
    action = Router(config(START)).route(event())
    assert action is not None
    result = await FreshIds(DryRun(), "-replay-g1").execute(action, event())
    assert result.workflow_id == "acme:order-o-1-replay-g1"


def test_condition_picks_the_first_matching_route() -> None:
    small = {**START, "name": "small", "when": "data.total_cents < 1000", "workflow": "Small"}
    big = {**START, "name": "big", "when": "data.total_cents >= 1000", "workflow": "Big"}
    router = Router(config(small, big))
    assert router.route(event(order_data("o", total=10))).workflow_type == "Small"  # type: ignore[union-attr]
    assert router.route(event(order_data("o", total=5000))).workflow_type == "Big"  # type: ignore[union-attr]


def test_no_match_returns_none() -> None:
    router = Router(config(START))
    assert router.route(event(topic="elsewhere")) is None
    assert router.route(event(type="com.example.order.cancelled")) is None


def test_signal_carries_the_event_id() -> None:
    route = {
        "name": "cancel", "topic": "orders", "type": PLACED, "action": "signal",
        "workflow_id": "order-{key}", "signal": "cancel",
    }  # fmt: skip
    action = Router(config(route)).route(event())
    assert action is not None and action.kind is ActionKind.SIGNAL
    assert action.args == ()
    assert action.message[0]["event_id"] == "evt-1"
    assert action.message[0]["payload"] == order_data("o-1")


def test_missing_template_field_is_a_route_error() -> None:
    route = {**START, "workflow_id": "order-{data.nope}"}
    with pytest.raises(RouteError, match=r"data\.nope"):
        Router(config(route)).route(event())


def test_condition_error_is_a_route_error() -> None:
    route = {**START, "when": "data.nope > 1"}
    with pytest.raises(RouteError):
        Router(config(route)).route(event())


@pytest.mark.parametrize(
    "when",
    [
        "data.total_cents > 0 && data.currency == 'EUR'",
        "data.items.size() > 1",
        "data.items[0].sku == 'sku-1'",
        "data.items.exists(key, key.quantity > 0)",
        "size(data) == 6",
        "'currency' in data",
        "data['currency'] == 'EUR'",
        "has(data.missing)",
        "key == 'o-1' && tenant == 'acme' && type.endsWith('placed')",
        "data . currency == 'EUR'",
    ],
)
def test_conditions_see_every_field_they_read(when: str) -> None:
    """Conditions share a context of only the fields they read; results match the full event."""
    import cel

    data = order_data("o-1", total=2500)
    data["items"].append({"sku": "sku-2", "quantity": 3, "unit_price_cents": 1})
    expected = cel.compile(when).execute(event(data).as_context())
    other = {**START, "name": "other", "when": "data.total_cents < 0", "workflow": "Other"}
    router = Router(config(other, {**START, "when": when}))
    action = router.route(event(data))
    assert (action is not None and action.route == "start-order") is expected


def test_condition_must_be_boolean() -> None:
    with pytest.raises(RouteError, match="not a bool"):
        Router(config({**START, "when": "data.total_cents"})).route(event())


def test_invalid_routes_name_route_and_field() -> None:
    with pytest.raises(ConfigError) as err:
        config({**START, "task_queue": None})
    assert "start-order" in str(err.value) and "task_queue" in str(err.value)
    with pytest.raises(ConfigError, match="action"):
        config({**START, "action": "explode"})
    with pytest.raises(ConfigError, match="used twice"):
        config(START, START)
    with pytest.raises(ConfigError, match="surprise"):
        config({**START, "surprise": 1})


def test_bad_condition_fails_at_start_up() -> None:
    with pytest.raises(ConfigError, match="when"):
        Router(config({**START, "when": "data.total >"}))


def test_template_parse() -> None:
    t = Template.parse("order-{data.order_id}-{key}")
    assert t.paths() == [("data", "order_id"), ("key",)]
    assert t.render({"data": {"order_id": "7"}, "key": "k"}) == "order-7-k"
    with pytest.raises(ConfigError):
        Template.parse("{data.x!r}")


def test_template_renders_as_the_field_paths_read() -> None:
    # Plain dicts are read directly, anything else through ``lookup``: same values.
    t = Template.parse("{{x}}-{data.order_id}-{data.items.0.sku}-{key}-{data.n}")
    context: dict[str, Any] = {
        "data": {"order_id": "o-1", "items": [{"sku": "s"}], "n": 0}, "key": "k"
    }  # fmt: skip
    assert t.render(context) == "{x}-o-1-s-k-0"
    assert t.render(MappingProxyType({**context, "data": MappingProxyType(context["data"])})) == (
        "{x}-o-1-s-k-0"
    )
    for missing in ({**context, "data": {"order_id": ""}}, {**context, "data": None}):
        with pytest.raises(KeyError, match=r"data\.order_id"):
            t.render(missing)
    with pytest.raises(KeyError, match="key"):
        t.render({**context, "key": None})


def test_actions_have_every_field_of_their_type() -> None:
    routes = [
        {**START, "name": "start"},
        {"name": "signal", "topic": "orders", "type": PLACED, "action": "signal",
         "workflow_id": "o-{data.order_id}", "signal": "s"},
        {"name": "sws", "topic": "orders", "type": PLACED, "action": "signal_with_start",
         "workflow": "W", "task_queue": "q", "workflow_id": "o-{data.order_id}", "signal": "s",
         "args": ["data", "key"], "search_attributes": {"Region": "eu"},
         "memo": {"who": "{data.customer_id}"}, "priority": 2},
        {"name": "terminate", "topic": "orders", "type": PLACED, "action": "terminate",
         "workflow_id": "o-{data.order_id}"},
    ]  # fmt: skip
    for spec in routes:
        action = Router(config(spec)).route(event())
        assert action is not None
        assert set(vars(action)) == {f.name for f in dataclasses.fields(Action)}
        assert Action(**vars(action)) == action
        with pytest.raises(dataclasses.FrozenInstanceError):
            action.route = "other"  # type: ignore[misc]


def test_condition_paths_ignore_strings_and_methods() -> None:
    paths = condition_paths("data.items.size() > 0 && data.currency == 'data.fake' && tenant != ''")
    assert ("data", "items") in paths
    assert ("data", "currency") in paths
    assert ("data", "fake") not in paths
    assert ("tenant",) in paths


def test_routes_check(catalog: SchemaCatalog) -> None:
    good = config(START, {**START, "name": "s2", "when": "data.items.size() > 0"})
    assert check_routes(good, catalog) == []
    bad = config(
        {**START, "workflow_id": "order-{data.order_number}"},
        {**START, "name": "cond", "when": "data.totl > 0"},
        {**START, "name": "type", "type": "com.example.nope"},
    )
    problems = [str(p) for p in check_routes(bad, catalog)]
    assert any("start-order" in p and "workflow_id" in p and "order_number" in p for p in problems)
    assert any("cond" in p and "when" in p and "totl" in p for p in problems)
    assert any("type" in p and "com.example.nope" in p for p in problems)


def test_nested_array_fields_are_known(catalog: SchemaCatalog) -> None:
    ok = config(
        {**START, "args": ["data.items", "data.order_id"], "when": "data.items[0].sku != ''"}
    )
    assert check_routes(ok, catalog) == []


def test_repository_routes_file_is_valid(catalog: SchemaCatalog) -> None:
    from bridge.settings import REPO_ROOT

    cfg = RoutesConfig.load(REPO_ROOT / "routes.yaml")
    assert check_routes(cfg, catalog) == []


def test_the_routes_search_attributes_are_what_provisioning_registers() -> None:
    from bridge.settings import REPO_ROOT

    cfg = RoutesConfig.load(REPO_ROOT / "routes.yaml")
    assert cfg.search_attributes() == {"CustomerId": "Keyword"}
    action = Router(cfg).route(event())
    assert action is not None and action.search_attributes == {"CustomerId": "cust-1"}
