"""Pure pieces of the saga helper and the example services around it."""

from __future__ import annotations

from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    TimeoutError,
    TimeoutType,
)

from bridge.envelope import Event
from bridge.sdk.saga import SagaOutcome, describe_failure
from bridge.sdk.workflow import EventDedupe
from bridge.settings import Settings
from services.config import ServicesConfig
from services.notifications.consumer import message_for


def _activity_error(cause: BaseException) -> ActivityError:
    error = ActivityError(
        "activity failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="payments.charge",
        activity_id="2",
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    error.__cause__ = cause
    return error


def test_failure_is_described_by_the_activitys_own_error() -> None:
    declined = ApplicationError("the card was declined", type="CardDeclined", non_retryable=True)
    assert describe_failure(_activity_error(declined)) == "CardDeclined: the card was declined"
    assert (
        describe_failure(ApplicationError("cancelled early")) == "ApplicationError: cancelled early"
    )
    timeout = TimeoutError("timed out", type=TimeoutType.START_TO_CLOSE, last_heartbeat_details=[])
    assert describe_failure(_activity_error(timeout)) == "timed out (START_TO_CLOSE)"


def test_outcome_as_workflow_result() -> None:
    outcome = SagaOutcome(
        "compensated",
        {"order_id": "o-1", "step": "charge_payment", "reason": "r", "compensated_steps": ["a"]},
        "ce-1",
        "charge_payment",
        "r",
        ["a"],
    )
    assert outcome.as_dict() == {
        "status": "compensated",
        "order_id": "o-1",
        "step": "charge_payment",
        "reason": "r",
        "compensated_steps": ["a"],
        "outcome_event_id": "ce-1",
        "failed_compensations": [],
        "unpublished_compensations": [],
    }


def test_dedupe_drops_repeats_and_forgets_the_oldest() -> None:
    dedupe = EventDedupe(["a"])
    assert not dedupe.first_time({"event_id": "a"})
    assert dedupe.first_time({"event_id": "b"})
    assert not dedupe.first_time({"event_id": "b"})
    assert dedupe.first_time({"payload": 1})  # no id: never dropped
    assert dedupe.state() == ["a", "b"]


def test_service_ports_follow_the_api_port_unless_set() -> None:
    settings = Settings(api_port=41080)
    config = ServicesConfig(payments_port=9999)
    assert config.port("orders", settings) == 41081
    assert config.port("notifications", settings) == 41085
    assert config.port("payments", settings) == 9999
    assert ServicesConfig(port_base=7000).port("inventory", settings) == 7002
    assert ServicesConfig.database("orders", Settings(data_dir="/d")).as_posix() == (
        "/d/services/orders.db"
    )


def _event(type: str, data: dict[str, object]) -> Event:
    return Event(id="e-1", type=type, source="ktb", data=data, key="o-1")


def test_notification_messages() -> None:
    assert (
        message_for(
            _event("com.example.order.completed", {"order_id": "o-1", "shipment_id": "shp-1"})
        )
        == "Order o-1 is confirmed and on its way (shipment shp-1)."
    )
    assert (
        message_for(
            _event(
                "com.example.order.compensated",
                {"order_id": "o-1", "reason": "declined", "compensated_steps": ["a", "b"]},
            )
        )
        == "Order o-1 could not be completed (declined); undone: a, b."
    )
    assert (
        message_for(
            _event("com.example.order.step_compensated", {"order_id": "o-1", "detail": "released"})
        )
        == "Order o-1: released."
    )
