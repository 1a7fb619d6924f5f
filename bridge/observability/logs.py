"""Logging: JSON lines by default, a readable console format under ``ktb dev``.

Every line carries the context fields that are known where it was logged: the
bridge passes ``event_id``, ``workflow_id``, ``route``, ``topic``, ``partition``,
``offset`` ... as ``extra``; lines logged through the Temporal SDK's
``workflow.logger`` / ``activity.logger`` get the workflow and activity ids from
the SDK's own ``extra``; and while a span is recording, ``trace_id`` and
``span_id`` tie the line to its trace.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

CONTEXT_FIELDS = (
    "event_id", "workflow_id", "run_id", "route", "tenant_id", "topic", "partition", "offset",
    "error_type", "workflow_type", "activity_type", "activity_id", "attempt", "task_queue",
)  # fmt: skip
"""Context fields in the order they are written."""

# What the Temporal SDK's logger adapters put in ``extra`` (``temporal_workflow`` and
# ``temporal_activity`` dicts), renamed to the bridge's field names.
TEMPORAL_EXTRAS = ("temporal_workflow", "temporal_activity")
TEMPORAL_NAMES = {
    "workflow_id": "workflow_id",
    "run_id": "run_id",
    "workflow_run_id": "run_id",
    "workflow_type": "workflow_type",
    "activity_id": "activity_id",
    "activity_type": "activity_type",
    "attempt": "attempt",
    "task_queue": "task_queue",
}
QUIET_LOGGERS = ("aiokafka",)


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields of ``record`` that are set, plus the current trace if any."""
    out: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    for extra in TEMPORAL_EXTRAS:
        details = getattr(record, extra, None)
        if isinstance(details, Mapping):
            for key, name in TEMPORAL_NAMES.items():
                value = details.get(key)
                if value is not None:
                    out.setdefault(name, value)
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        out["trace_id"] = f"{span.trace_id:032x}"
        out["span_id"] = f"{span.span_id:016x}"
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the context, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **context(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in context(record).items() if k != "span_id")
        line = (
            f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} "
            f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        )
        if ctx:
            line += f"  {ctx}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO", console: bool = False) -> None:
    """Configure the root logger once per process (``KTB_LOG_LEVEL``, ``KTB_LOG_FORMAT``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
