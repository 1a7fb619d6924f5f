"""Fast route conditions: the same answer as CEL, or no answer (CEL then decides)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import cel
import pytest

from bridge.conditions import Undecided, compile_fast, convertible
from bridge.envelope import Event
from bridge.errors import RouteError
from bridge.routes import Router, RoutesConfig
from bridge.templates import condition_paths, reads_plan
from tests.support import order_data

PLACED = "com.example.order.placed"
START = {
    "name": "start", "topic": "orders", "type": PLACED, "action": "start",
    "workflow": "W", "task_queue": "q", "workflow_id": "order-{data.order_id}",
}  # fmt: skip

EXPRESSIONS = [
    "data.currency == 'EUR'",
    'data.currency != "EUR"',
    "data.total_cents >= 100000",
    "data.total_cents < -5",
    "data.currency == 'EUR' && data.total_cents > 0",
    "data.currency == 'EUR' || data.total_cents > 0",
    "!(data.total_cents > 0)",
    "!data.flag",
    "!!data.flag",
    "data.flag",
    "data.flag == true",
    "data.flag != false",
    "data.items.size() > 2",
    "size(data.items) == 0",
    "data.meta.size() == 1",
    "data.nested.inner.code == 'x'",
    "data.currency < 'FFF'",
    "data.currency >= data.other",
    "data.total_cents == data.count",
    "(data.total_cents > 0 && data.flag) || data.currency == 'USD'",
    "data.flag == 1 && false",
    "false && data.missing == 1",
    "true || data.missing == 1",
    "data.flag == 1 || true",
    "data.total_cents > 0 && data.missing == 1",
    "false && data.currency",
    "data.flag || data.total_cents",
    "data.flag && data.currency",
    "type == 'com.example.order.placed'",
    "tenant == 'acme' && key != ''",
    "data.currency.size() == 3",
    "data.total_cents == 9223372036854775807",
    "data.total_cents == -9223372036854775808",
]

VALUES: list[Any] = [
    "EUR", "USD", "", "é", "\U0001f600", "zz", 0, 1, -6, 150_000, 2**63, -(2**63) - 1,
    2**63 - 1, -(2**63), 1.0, 2.5, float("nan"), True, False, None, b"EUR", [], [1, 2, 3],
    {}, {"a": 1}, {"inner": {"code": "x"}}, {"inner": {"code": 1}},
]  # fmt: skip
FIELDS = ["currency", "total_cents", "flag", "items", "meta", "nested", "other", "count"]


def contexts() -> list[dict[str, Any]]:
    """Event contexts with every field taking every value (and being absent) in turn."""
    base = {
        "currency": "EUR", "total_cents": 2500, "flag": True, "items": [1, 2, 3],
        "meta": {"a": 1}, "nested": {"inner": {"code": "x"}}, "other": "EUR", "count": 2500,
    }  # fmt: skip
    out = []
    for name in FIELDS:
        for value in VALUES:
            out.append({**base, name: value})
        out.append({k: v for k, v in base.items() if k != name})
    roots = {"id": "e", "type": PLACED, "source": "s", "subject": "", "tenant": "acme",
             "key": "k", "topic": "orders"}  # fmt: skip
    return [{"data": data, **roots} for data in out]


def cel_answer(expression: str, context: dict[str, Any]) -> Any:
    try:
        return cel.compile(expression).execute(cel.Context(variables=context))
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        return type(exc)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_a_fast_answer_is_always_cels_answer(expression: str) -> None:
    compiled = compile_fast(expression)
    assert compiled is not None, expression
    condition, paths = compiled
    assert set(paths) <= set(condition_paths(expression))
    answered = 0
    for context in contexts():
        try:
            fast = condition(context)
        except Undecided:
            continue
        answered += 1
        assert fast is cel_answer(expression, context), (expression, context["data"])
    assert answered > 0


@pytest.mark.parametrize(
    "expression",
    [
        "data.price > 1.5",
        "data.x == null",
        "has(data.x)",
        "data.items[0].sku == 'a'",
        "data.id.startsWith('a')",
        "data.x in ['a', 'b']",
        "data.x == 'a\\'b'",
        "data.x == r'a'",
        "data.x == '''a'''",
        "data.x == 1u",
        "data.x == 0x10",
        "data.x == 007",
        "data.x + 1 > 2",
        "data.x > 1 ? true : false",
        "1 < data.x < 3",
        "other.x == 1",
        "data.x == 9223372036854775808",
        "data.items.all(i, i > 0)",
        "data.x == 1 // comment",
        "int(data.x) == 1",
    ],
)
def test_expressions_outside_the_subset_are_left_to_cel(expression: str) -> None:
    assert compile_fast(expression) is None


def test_string_size_is_left_to_cel() -> None:
    # CEL's size() of a string counts bytes here, Python's len characters.
    compiled = compile_fast("size(data.x) == 2")
    assert compiled is not None
    with pytest.raises(Undecided):
        compiled[0]({"data": {"x": "é2"}})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"x": "a", "y": [1, {"z": 2.5}], "n": None, "b": b"\x00", "t": True}, True),
        ({"x": uuid.UUID(int=1)}, False),
        ({"x": datetime.date(2026, 1, 1)}, False),
        ({"x": "\ud800"}, False),
        ({"x": {1: "a"}}, False),
        ({"x": (1, 2)}, False),
    ],
)
def test_convertible_is_false_for_what_cel_may_refuse(value: Any, expected: bool) -> None:
    assert convertible({"data": value}, None) is expected


def test_convertible_looks_only_at_what_conditions_read() -> None:
    plan = reads_plan([("data", "x")])
    assert convertible({"data": {"x": 1, "y": uuid.UUID(int=1)}}, plan)
    assert not convertible({"data": {"x": uuid.UUID(int=1)}}, plan)


def route_event(data: dict[str, Any]) -> Event:
    return Event(id="e-1", type=PLACED, source="s", data=data, topic="orders", key="k")


def test_a_field_cel_cannot_convert_fails_as_before() -> None:
    # The first route answers in Python, but the second reads a value CEL refuses:
    # the event fails as it did when every condition went through CEL.
    first = {**START, "name": "first", "when": "data.currency == 'EUR'"}
    second = {**START, "name": "second", "when": "data.ref == 'x'"}
    router = Router(RoutesConfig.parse({"routes": [first, second]}))
    data = {**order_data("o-1"), "ref": uuid.UUID(int=1)}
    with pytest.raises(RouteError, match="first"):
        router.route(route_event(data))


def test_undecided_conditions_go_to_cel_with_its_errors() -> None:
    route = {**START, "when": "data.missing > 1"}
    router = Router(RoutesConfig.parse({"routes": [route]}))
    assert router.routes[0].fast_condition is not None
    with pytest.raises(RouteError, match="condition failed"):
        router.route(route_event(order_data("o-1")))


def test_first_match_order_is_kept_across_fast_and_cel_conditions() -> None:
    routes = [
        {**START, "name": "cel-no", "when": "data.customer_id.startsWith('zz')"},
        {**START, "name": "fast-no", "when": "data.total_cents < 0"},
        {**START, "name": "cel-yes", "when": "data.customer_id.startsWith('c')"},
        {**START, "name": "fast-yes", "when": "data.total_cents > 0"},
    ]
    router = Router(RoutesConfig.parse({"routes": routes}))
    assert [r.fast_condition is not None for r in router.routes] == [False, True, False, True]
    action = router.route(route_event(order_data("o-1")))
    assert action is not None and action.route == "cel-yes"


def test_routes_of_other_keys_in_between_keep_the_file_order() -> None:
    routes = [
        {**START, "name": "big", "when": "data.total_cents >= 1000"},
        {**START, "name": "payments", "topic": "payments", "when": "data.total_cents > 0"},
        {**START, "name": "cancelled", "type": "com.example.order.cancelled"},
        {**START, "name": "any"},
        {**START, "name": "never", "when": "data.total_cents > 0"},
    ]
    router = Router(RoutesConfig.parse({"routes": routes}))
    small, large = order_data("o-1", total=10), order_data("o-2", total=5000)
    assert [router.route(route_event(d)).route for d in (small, large)] == ["any", "big"]  # type: ignore[union-attr]


def test_an_undecided_answer_keeps_no_traceback_of_earlier_events() -> None:
    # Each undecided answer raises its own exception: one shared instance would chain
    # every raise's frames (and the events they hold) onto its traceback.
    compiled = compile_fast("data.amount > 100")
    assert compiled is not None
    condition, _ = compiled
    seen = []
    for _ in range(3):
        with pytest.raises(Undecided) as raised:
            condition({"data": {"amount": 12.5}})
        seen.append(raised.value)
    assert len({id(e) for e in seen}) == 3
    depth = 0
    tb = seen[-1].__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    assert depth <= 3
