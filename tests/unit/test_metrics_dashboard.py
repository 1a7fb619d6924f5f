"""The Grafana dashboard only queries metrics ktb exports, with well-formed panels."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.observability.metrics import Metrics
from bridge.settings import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "ktb.json"
OURS = re.compile(r"\b((?:ktb|workflow|activity)_[a-z_]+)\b")
SDK = re.compile(r"\b(temporal_[a-z_]+)\b")
GROUPING = re.compile(r"\bby\s*\([^)]*\)")


def queried(pattern: re.Pattern[str]) -> set[str]:
    """Metric names matching ``pattern`` in the panels' queries (grouping labels left out)."""
    exprs = [GROUPING.sub("", t["expr"]) for p in panels() for t in p.get("targets", [])]
    return {name for expr in exprs for name in pattern.findall(expr)}


def panels() -> list[dict[str, Any]]:
    return json.loads(DASHBOARD.read_text())["panels"]


def exported_names() -> set[str]:
    """Every sample name the metrics container can export (once each label set is used)."""
    metrics = Metrics()
    for name, metric in vars(metrics).items():
        labelnames = getattr(metric, "_labelnames", ())
        if name != "registry" and labelnames:
            metric.labels(*["x"] * len(labelnames))
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples} | {
        f.name for f in metrics.registry.collect()
    }


def test_every_queried_ktb_metric_exists():
    used = queried(OURS)
    assert {"ktb_consumer_lag", "workflow_duration_seconds_bucket"} <= used
    assert used <= exported_names(), sorted(used - exported_names())


def test_sdk_metrics_use_the_exposed_naming():
    used = queried(SDK)
    assert used
    for name in used:
        # Counters end in _total, durations in _seconds (see bridge/telemetry.SdkMetrics).
        assert name.endswith(("_total", "_seconds", "_seconds_bucket", "_available")), name


def test_panels_are_well_formed():
    seen: set[int] = set()
    for panel in panels():
        assert panel["id"] not in seen
        seen.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("[") == expr.count("]"), expr
