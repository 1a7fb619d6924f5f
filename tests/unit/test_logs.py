"""JSON and console log lines: context fields, Temporal SDK extras, trace ids, levels."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from bridge.observability import logs
from bridge.observability.logs import ConsoleFormatter, JsonFormatter


def record(msg: str = "event started", level: int = logging.INFO, **extra: object):
    rec = logging.LogRecord("ktb.ingress", level, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_carries_the_known_context_fields_only():
    line = JsonFormatter().format(
        record(event_id="e-1", workflow_id="order-1", run_id="r-1", route="start-order",
               tenant_id=None, topic="orders", partition=2, offset=41)
    )  # fmt: skip
    out = json.loads(line)
    assert out["msg"] == "event started"
    assert out["level"] == "info" and out["logger"] == "ktb.ingress"
    assert out["ts"].endswith("+00:00")
    assert {k: out[k] for k in ("event_id", "workflow_id", "run_id", "route")} == {
        "event_id": "e-1", "workflow_id": "order-1", "run_id": "r-1", "route": "start-order",
    }  # fmt: skip
    assert (out["topic"], out["partition"], out["offset"]) == ("orders", 2, 41)
    assert "tenant_id" not in out
    assert "trace_id" not in out


def test_temporal_sdk_extras_become_workflow_and_activity_fields():
    activity_details = {
        "activity_id": "5", "activity_type": "payments.charge", "attempt": 2,
        "namespace": "default", "task_queue": "payments", "workflow_id": "order-1",
        "workflow_run_id": "r-9", "workflow_type": "OrderFulfillment",
    }  # fmt: skip
    out = json.loads(JsonFormatter().format(record("charging", temporal_activity=activity_details)))
    assert out["workflow_id"] == "order-1"
    assert out["run_id"] == "r-9"
    assert out["activity_type"] == "payments.charge"
    assert out["attempt"] == 2
    assert "namespace" not in out


def test_bridge_fields_win_over_sdk_extras():
    out = json.loads(
        JsonFormatter().format(
            record(workflow_id="mine", temporal_workflow={"workflow_id": "sdk", "run_id": "r"})
        )
    )
    assert out["workflow_id"] == "mine"
    assert out["run_id"] == "r"


def test_a_line_logged_inside_a_span_names_its_trace():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        out = json.loads(JsonFormatter().format(record()))
        context = span.get_span_context()
    assert out["trace_id"] == f"{context.trace_id:032x}"
    assert out["span_id"] == f"{context.span_id:016x}"


def test_exceptions_are_one_json_field():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed", logging.ERROR, event_id="e-2")
        rec.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]
    assert out["level"] == "error"


def test_console_line_is_readable():
    line = ConsoleFormatter().format(record(event_id="e-1", workflow_id="order-1", offset=3))
    assert " info    ktb.ingress: event started  " in line
    assert line.endswith("event_id=e-1 workflow_id=order-1 offset=3")


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = logging.getLogger("aiokafka").level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(quiet)


def test_setup_sets_level_and_format(restore_root):
    logs.setup("debug", console=False)
    assert restore_root.level == logging.DEBUG
    assert isinstance(restore_root.handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("aiokafka").level == logging.WARNING
    logs.setup("ERROR", console=True)
    assert restore_root.level == logging.ERROR
    assert isinstance(restore_root.handlers[0].formatter, ConsoleFormatter)
    assert logging.getLogger("aiokafka").level == logging.ERROR
