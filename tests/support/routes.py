"""Routes configs for tests: from plain dicts, the recorder routes, files for subprocesses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bridge.routes import RoutesConfig


def routes_config(routes: list[dict[str, Any]], unmatched: str = "dead_letter") -> RoutesConfig:
    """A validated routes config from plain dicts."""
    return RoutesConfig.parse({"routes": routes, "unmatched": unmatched})


def recorder_routes(topic: str, prefix: str, **options: Any) -> list[dict[str, Any]]:
    """Every action kind on one topic, against ``KtbTestRecorder`` workflows
    ``<prefix>-<order id>`` on task queue ``prefix``: ``order.placed`` starts one, and a
    ``payment.confirmed``'s payment id picks the rest by its prefix (``note`` and
    ``finish`` signal, ``sws`` signals with start, ``add`` updates with start,
    ``cancel``, ``stop`` terminates). ``options`` go into every route."""
    common = {"topic": topic, "workflow_id": f"{prefix}-{{data.order_id}}", **options}
    starting = {**common, "workflow": "KtbTestRecorder", "task_queue": prefix}

    def by_payment(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": f"{name}-{prefix}",
            "type": "com.example.payment.confirmed",
            "when": f"data.payment_id.startsWith('{name}')",
            **extra,
        }

    return [
        {
            "name": f"start-{prefix}",
            "type": "com.example.order.placed",
            "action": "start",
            **starting,
        },
        by_payment("note", action="signal", signal="note", **common),
        by_payment("finish", action="signal", signal="finish", **common),
        by_payment("sws", action="signal_with_start", signal="note", **starting),
        by_payment("add", action="update_with_start", update="add", **starting),
        by_payment("cancel", action="cancel", **common),
        by_payment("stop", action="terminate", **common),
    ]


def write_routes(path: Path, config: RoutesConfig) -> Path:
    """Write a routes file for a bridge subprocess."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    return path
