"""The HTTP API (``ktb api``): produce events, provenance and process lookups, streams."""

from bridge.api.app import ROUTERS, create_app
from bridge.api.auth import Caller, hash_key
from bridge.api.problems import Problem
from bridge.api.state import ApiState, CallerDep, State

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
