"""Typed errors of the bridge.

The transient/permanent split is a property of the type: the consumer retries
``TransientError`` with backoff and never dead-letters it, and dead-letters every
``PermanentError`` with ``error_type`` as the ``ktb_error_type`` header.
"""

from __future__ import annotations


class Abandoned(Exception):
    """A record's partition closed while it waited to be acted on (for a rate limit's
    token or a slot in Temporal): it stays not done and is read again by whoever holds
    the partition next.

    Control flow, not a fault: the engine stops the record's work as on any close.
    """


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""

    error_type = "bridge_error"
    transient = False

    def __init__(
        self,
        message: str,
        *,
        event_id: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.event_id = event_id
        self.topic = topic
        self.partition = partition
        self.offset = offset


class ConfigError(BridgeError):
    """Configuration (settings, routes file, schemas) is invalid; raised at start-up."""

    error_type = "config_error"


class PermanentError(BridgeError):
    """Retrying cannot help: the record goes to the dead-letter topic."""

    error_type = "permanent_error"


class DecodeError(PermanentError):
    """The record's headers or bytes are not a CloudEvent we can read."""

    error_type = "decode_error"


class TenantError(DecodeError):
    """The event's tenant id (``ce_tenantid``) is not a well-formed tenant id."""

    error_type = "invalid_tenant"


class UnknownSchemaError(DecodeError):
    """No schema in the catalog has the record's fingerprint or type."""

    error_type = "unknown_schema"


class UnknownSchemaIdError(UnknownSchemaError):
    """The Schema Registry has no schema with the record's schema id; ``schema_id`` names it."""

    error_type = "unknown_schema_id"

    def __init__(self, message: str, *, schema_id: int, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.schema_id = schema_id


class UnsupportedFormatError(DecodeError):
    """The record is in a wire format ktb recognises and does not read (Protobuf framing,
    Schema Registry framing with no registry configured); ``format`` names it."""

    error_type = "unsupported_format"

    def __init__(self, message: str, *, format: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.format = format


class SchemaMismatchError(PermanentError):
    """The data does not fit the schema of its type; ``field`` names where."""

    error_type = "schema_mismatch"

    def __init__(self, message: str, *, field: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.field = field


class SchemaIncompatibleError(SchemaMismatchError):
    """The writer schema cannot be resolved to the reader schema the route expects (Avro
    schema resolution); ``field`` names the first field that does not resolve."""

    error_type = "schema_incompatible"


class SubjectNotRegisteredError(PermanentError):
    """Publishing under ``auto_register: false`` to a Schema Registry subject that does not
    hold the event's schema; ``subject`` names it."""

    error_type = "subject_not_registered"

    def __init__(self, message: str, *, subject: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.subject = subject


class SchemaRejectedError(PermanentError):
    """The Schema Registry refused to register or take a schema (incompatible with the
    subject's versions, invalid); ``subject`` and the HTTP ``status`` say where and how."""

    error_type = "schema_rejected"

    def __init__(self, message: str, *, subject: str, status: int, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.subject = subject
        self.status = status


class RouteError(PermanentError):
    """A route could not be applied to the event (condition or template failed)."""

    error_type = "route_error"


class UnmatchedEventError(PermanentError):
    """No route matched and the unmatched policy is ``dead_letter``."""

    error_type = "unmatched"


class ActionRejectedError(PermanentError):
    """Temporal rejected the action itself (bad arguments, unknown workflow)."""

    error_type = "action_rejected"


class TenantMismatchError(PermanentError):
    """The workflow an action targets belongs to another tenant than the event's."""

    error_type = "tenant_mismatch"


class WorkflowClosedError(PermanentError):
    """A signal or update for a closed workflow that never received this event."""

    error_type = "workflow_closed"


class UpdateRejectedError(PermanentError):
    """The workflow's update validator rejected the update; ``message`` has its reason."""

    error_type = "update_rejected"


class PayloadTooLargeError(PermanentError):
    """The action's request is larger than Temporal will ever accept."""

    error_type = "payload_too_large"


class InternalError(PermanentError):
    """An unexpected exception kept failing for one record; it is dead-lettered."""

    error_type = "internal_error"


class PauseRequested(BridgeError):
    """A record whose route says ``on_failure: pause`` failed for good: its partition stops
    at it until an operator resumes (tries it again) or skips it (dead-letters it)."""

    error_type = "paused"

    def __init__(self, error: PermanentError) -> None:
        super().__init__(
            error.message, event_id=error.event_id, topic=error.topic,
            partition=error.partition, offset=error.offset,
        )  # fmt: skip
        self.error = error


class TransientError(BridgeError):
    """Temporal or Kafka is unavailable for now: retry, never dead-letter."""

    error_type = "transient"
    transient = True


class DatabaseUnavailable(TransientError):
    """The provenance database does not answer (or refuses to, while it starts or stops)."""

    error_type = "database_unavailable"


class SchemaNotLoaded(TransientError):
    """A record needs a Schema Registry schema that is not cached yet; the asynchronous
    decode (``Decoder.decode``) loads it, the synchronous one (``decode_now``) cannot."""

    error_type = "schema_not_loaded"

    def __init__(self, message: str, *, schema_id: int | None = None, subject: str | None = None):
        super().__init__(message)
        self.schema_id = schema_id
        self.subject = subject


class ReplayError(BridgeError):
    """A replay could not run to the end."""

    error_type = "replay_error"


class InvalidRequestError(BridgeError):
    """A replay or redrive request is wrong (range, topic, partition, selection); nothing done."""

    error_type = "invalid_request"


class UnsafeOptionError(ConfigError):
    """An extra Kafka client option is not allowed; ``option`` names it."""

    error_type = "unsafe_option"

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"Kafka client option {option!r} is not allowed: {reason}")
        self.option = option


class KafkaAuthError(ConfigError):
    """Kafka refused the configured credentials or TLS identity; ``bootstrap`` says where."""

    error_type = "kafka_auth"

    def __init__(self, message: str, *, bootstrap: str) -> None:
        super().__init__(message)
        self.bootstrap = bootstrap


class StackError(ConfigError):
    """A local service could not be prepared or did not come up."""

    error_type = "stack_error"


class UnsafeValueError(ValueError):
    """A value a Temporal visibility query cannot carry (``bridge.temporal.visibility``)."""
