"""The HTTP API (``ktb api``): produce events, provenance and process lookups, streams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.api.auth import Caller, hash_key
from bridge.api.problems import Problem
from bridge.api.state import ApiState, CallerDep, State

if TYPE_CHECKING:
    from bridge.api.app import ROUTERS, create_app

__all__ = [
    "ROUTERS",
    "ApiState",
    "Caller",
    "CallerDep",
    "Problem",
    "State",
    "create_app",
    "hash_key",
]


def __getattr__(name: str) -> Any:
    """``create_app`` and ``ROUTERS`` load the app (every router and its models) on first
    use: a process that only wires API state, as every bridge does, never pays for them."""
    if name in ("ROUTERS", "create_app"):
        from bridge.api import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
