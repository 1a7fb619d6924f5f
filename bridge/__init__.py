"""ktb: a declarative, idempotent bridge from Kafka domain events to Temporal workflows.

The public surface is small; everything else is an implementation module.
"""

from bridge.codec import SchemaCatalog
from bridge.dispatch import Dispatcher, Outcome, Result
from bridge.envelope import Event, decode_record, encode_event
from bridge.errors import BridgeError, PermanentError, TransientError
from bridge.ingress import Ingress
from bridge.routes import Action, ActionKind, Router, RoutesConfig
from bridge.sdk.egress import Publisher, PublishRequest
from bridge.settings import Settings

__all__ = [
    "Action",
    "ActionKind",
    "BridgeError",
    "Dispatcher",
    "Event",
    "Ingress",
    "Outcome",
    "PermanentError",
    "PublishRequest",
    "Publisher",
    "Result",
    "Router",
    "RoutesConfig",
    "SchemaCatalog",
    "Settings",
    "TransientError",
    "decode_record",
    "encode_event",
]
