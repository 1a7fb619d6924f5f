"""Logging: JSON lines by default, a readable console format under ``ktb dev``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

CONTEXT_FIELDS = (
    "event_id", "workflow_id", "run_id", "route", "tenant_id", "topic", "partition", "offset",
    "error_type",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the bridge's context fields when known."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(
            f"{n}={getattr(record, n)}"
            for n in CONTEXT_FIELDS
            if getattr(record, n, None) is not None
        )
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
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
