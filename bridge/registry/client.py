"""Writer schemas by id and subjects' latest versions, from a Confluent-compatible registry.

Every schema is fetched once: ``writer_cached``/``latest_cached`` answer from memory
on the hot path (a dict lookup), and ``writer``/``latest`` ask the registry on first
sight, one request per id however many records wait for it. The registry's answers
are sorted by what retrying can do: an id it does not know is an
``UnknownSchemaIdError`` (a dead letter); no answer, a timeout, a 5xx, a refused
credential is a ``TransientError`` (the partition pauses, nothing is committed past).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from bridge.codec import WriterSchema
from bridge.errors import ConfigError, TransientError, UnknownSchemaIdError
from bridge.settings import Settings

log = logging.getLogger("ktb.registry")

NOT_FOUND = 404
REQUEST_TIMEOUT_S = 5.0
"""Deadline of one registry request; the engine's backoff retries after it."""
CLIENT_RETRIES = 1
"""The client's own retries of a request before it reports a failure (the engine retries
the record with its backoff after that, pausing the partition)."""

NOT_A_REGISTRY_ANSWER = (ValueError, KeyError, TypeError)
"""What the client raises on a success answer that is no registry response (the URL
points at another kind of server): transient, like no answer, so nothing is lost."""

T = TypeVar("T")


def registry_config(settings: Settings) -> dict[str, Any] | None:
    """confluent-kafka's client configuration from settings; ``None`` without a registry."""
    if settings.schema_registry_url is None:
        return None
    conf: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": REQUEST_TIMEOUT_S,
        "max.retries": CLIENT_RETRIES,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 1000,
    }
    if settings.schema_registry_username is not None and settings.schema_registry_password:
        password = settings.schema_registry_password.get_secret_value()
        conf["basic.auth.user.info"] = f"{settings.schema_registry_username}:{password}"
    if settings.schema_registry_token is not None:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = settings.schema_registry_token.get_secret_value()
        # Confluent Cloud routes by logical cluster; other registries ignore the header.
        conf["bearer.auth.logical.cluster"] = ""
    if settings.schema_registry_ca_file is not None:
        conf["ssl.ca.location"] = settings.schema_registry_ca_file
    if settings.schema_registry_cert_file is not None:
        conf["ssl.certificate.location"] = settings.schema_registry_cert_file
    if settings.schema_registry_key_file is not None:
        conf["ssl.key.location"] = settings.schema_registry_key_file
    return conf


class SchemaRegistry:
    """Writer schemas by id and subjects' latest versions, each asked for once and kept."""

    def __init__(self, client: AsyncSchemaRegistryClient) -> None:
        self.client = client
        self._writers: dict[int, WriterSchema] = {}
        self._latest: dict[str, WriterSchema | None] = {}
        self._pending: dict[object, asyncio.Future[Any]] = {}
        self.requests = 0
        """Registry lookups made (first sights of an id or subject, and their retries)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaRegistry | None:
        """The registry of ``settings``; ``None`` when ``KTB_SCHEMA_REGISTRY_URL`` is unset."""
        conf = registry_config(settings)
        if conf is None:
            return None
        try:
            return cls(AsyncSchemaRegistryClient(conf))
        except (ValueError, TypeError, OSError) as exc:
            # The message of a refused configuration names the option, never its value.
            raise ConfigError(f"Schema Registry client: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the client's HTTP connections."""
        await self.client.aclose()

    def writer_cached(self, schema_id: int) -> WriterSchema | None:
        """The writer schema of ``schema_id`` if it was fetched already."""
        return self._writers.get(schema_id)

    def latest_cached(self, subject: str) -> tuple[bool, WriterSchema | None]:
        """``(known, schema)``: whether ``subject``'s latest version was looked up, and it
        (``None`` when the registry has no such subject)."""
        if subject in self._latest:
            return True, self._latest[subject]
        return False, None

    async def writer(self, schema_id: int) -> WriterSchema:
        """The writer schema of ``schema_id``, fetched on first sight; raises
        ``UnknownSchemaIdError`` or ``TransientError``."""
        found = self._writers.get(schema_id)
        if found is not None:
            return found
        return await self._once(("id", schema_id), lambda: self._fetch_writer(schema_id))

    async def latest(self, subject: str) -> WriterSchema | None:
        """The latest registered version of ``subject`` (``None``: no such subject)."""
        if subject in self._latest:
            return self._latest[subject]
        return await self._once(("subject", subject), lambda: self._fetch_latest(subject))

    async def _once(self, key: object, fetch: Callable[[], Awaitable[T]]) -> T:
        """One request per key at a time: records waiting for the same schema share it."""
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(fetch())
            self._pending[key] = pending

            def finished(done: asyncio.Future[Any]) -> None:
                self._pending.pop(key, None)
                if not done.cancelled():
                    done.exception()  # seen here, should every waiter have gone

            pending.add_done_callback(finished)
        # A waiter cancelled (a revoke) leaves the request to the others.
        result: T = await asyncio.shield(pending)
        return result

    async def _fetch_writer(self, schema_id: int) -> WriterSchema:
        self.requests += 1
        try:
            schema = await self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                raise UnknownSchemaIdError(
                    f"the Schema Registry has no schema with id {schema_id} "
                    f"({exc.error_message}, error code {exc.error_code})",
                    schema_id=schema_id,
                ) from exc
            raise _unavailable(f"schema id {schema_id}", exc) from exc
        except (httpx.HTTPError, *NOT_A_REGISTRY_ANSWER) as exc:
            raise _unavailable(f"schema id {schema_id}", exc) from exc
        parsed = WriterSchema.parse(schema_id, schema.schema_type, schema.schema_str or "")
        self._writers[schema_id] = parsed
        log.info(
            "registry schema %d: %s %s", schema_id, parsed.kind, parsed.name or "(unnamed)",
            extra={"schema_id": schema_id},
        )  # fmt: skip
        return parsed

    async def _fetch_latest(self, subject: str) -> WriterSchema | None:
        self.requests += 1
        try:
            registered = await self.client.get_latest_version(subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                self._latest[subject] = None
                return None
            raise _unavailable(f"subject {subject!r}", exc) from exc
        except (httpx.HTTPError, *NOT_A_REGISTRY_ANSWER) as exc:
            raise _unavailable(f"subject {subject!r}", exc) from exc
        schema_id = registered.schema_id
        if schema_id is None or registered.schema is None:
            raise TransientError(
                f"the Schema Registry answered subject {subject!r} without a schema"
            )
        parsed = self._writers.get(schema_id) or WriterSchema.parse(
            schema_id, registered.schema.schema_type, registered.schema.schema_str or ""
        )
        self._writers.setdefault(schema_id, parsed)
        self._latest[subject] = parsed
        return parsed


def _unavailable(what: str, exc: Exception) -> TransientError:
    """A registry failure retrying may cure: unreachable, timed out, 5xx, credentials."""
    if isinstance(exc, SchemaRegistryError):
        detail = f"HTTP {exc.http_status_code}: {exc.error_message}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return TransientError(f"Schema Registry unavailable for {what}: {detail}")
