"""Kafka and Temporal connection security, derived from settings in one place.

Kafka: SASL (PLAIN, SCRAM-SHA-256/512) and TLS (CA, client certificate and key)
become aiokafka options with an ``ssl.SSLContext``; ``bridge.kafka`` applies them to
every producer, consumer and admin client. Extra client options pass through an
allowlist of Kafka option names: options that load code or read files or URLs
chosen by whoever writes the configuration (``sasl.jaas.config``, config
providers, OAuth endpoint URLs, key or trust stores outside the configured
locations, the class of CVE-2023-25194 and CVE-2025-27817) are refused with a
``ConfigError`` that names the option.

"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from bridge.errors import ConfigError, KafkaAuthError, UnsafeOptionError
from bridge.settings import Settings

SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


# --- the extra-options allowlist -----------------------------------------------------


def _positive_int(option: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(
            f"Kafka client option {option!r} must be an integer, not {value!r}"
        ) from None
    if number <= 0:
        raise ConfigError(f"Kafka client option {option!r} must be positive, not {value!r}")
    return number


# Kafka option name -> (aiokafka argument, converter). Only options every client
# kind (producer, consumer, admin) accepts, so one allowlist serves all of them.
PASS_THROUGH: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "client.id": ("client_id", lambda _o, v: v),
    "request.timeout.ms": ("request_timeout_ms", _positive_int),
    "retry.backoff.ms": ("retry_backoff_ms", _positive_int),
    "metadata.max.age.ms": ("metadata_max_age_ms", _positive_int),
    "connections.max.idle.ms": ("connections_max_idle_ms", _positive_int),
}
# Options that shape the TLS context rather than pass through.
TLS_OPTIONS = frozenset(
    {
        "ssl.truststore.location",
        "ssl.truststore.type",
        "ssl.keystore.location",
        "ssl.keystore.type",
        "ssl.endpoint.identification.algorithm",
    }
)
ALLOWED_OPTIONS = frozenset(PASS_THROUGH) | TLS_OPTIONS

_JAAS = (
    "a JAAS login module can be made to load classes and reach out over JNDI "
    "(CVE-2023-25194); set KTB_KAFKA_SASL_MECHANISM, KTB_KAFKA_SASL_USERNAME and "
    "KTB_KAFKA_SASL_PASSWORD instead"
)
_PROVIDERS = "config providers read files, directories or the environment at connect time"
_OAUTH = (
    "an OAuth token or JWKS endpoint URL lets the configuration make the client fetch "
    "arbitrary URLs or files (CVE-2025-27817)"
)
_CODE = "it names classes to load into the client"


def _refusal(option: str) -> str | None:
    """Why a dangerous option is refused, or ``None`` for an ordinary unknown one."""
    name = option.strip().lower()
    if name == "sasl.jaas.config" or name.endswith(".sasl.jaas.config"):
        return _JAAS
    if name == "config.providers" or name.startswith("config.providers."):
        return _PROVIDERS
    if name.startswith("sasl.oauthbearer.") and name.endswith(".url"):
        return _OAUTH
    if name.endswith((".class", ".classes")) or name in {"metric.reporters"}:
        return _CODE
    return None


def _inside(path: Path, locations: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(loc.resolve()) for loc in locations)


def _store_path(option: str, value: str, settings: Settings) -> Path:
    """A key or trust store path from the extra options, if it is in a configured location."""
    path = Path(value)
    if not path.is_absolute():
        raise UnsafeOptionError(option, f"{value!r} must be an absolute path")
    if not settings.kafka_ssl_locations:
        raise UnsafeOptionError(
            option,
            "no store locations are configured (KTB_KAFKA_SSL_LOCATIONS lists the "
            "directories key and trust stores may be read from)",
        )
    if not _inside(path, settings.kafka_ssl_locations):
        allowed = ", ".join(str(p) for p in settings.kafka_ssl_locations)
        raise UnsafeOptionError(option, f"{value} is outside the configured locations ({allowed})")
    return path


def checked_options(settings: Settings) -> dict[str, str]:
    """The extra client options, each either allowed or refused with a ``ConfigError``."""
    options: dict[str, str] = {}
    for option, value in settings.kafka_client_options.items():
        reason = _refusal(option)
        if reason is not None:
            raise UnsafeOptionError(option, reason)
        if "${" in value:
            raise UnsafeOptionError(option, f"its value references a config provider; {_PROVIDERS}")
        if option not in ALLOWED_OPTIONS:
            raise UnsafeOptionError(
                option,
                "it is not a known client option; allowed: " + ", ".join(sorted(ALLOWED_OPTIONS)),
            )
        options[option] = value
    for kind in ("truststore", "keystore"):
        store_type = options.get(f"ssl.{kind}.type", "PEM")
        if store_type.upper() != "PEM":
            raise ConfigError(
                f"Kafka client option 'ssl.{kind}.type' must be PEM, not {store_type!r} "
                "(convert JKS or PKCS12 stores with keytool or openssl)"
            )
    return options


# --- Kafka ----------------------------------------------------------------------------


def _readable(path: Path, what: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist or is not a file")
    return str(path)


def kafka_ssl_context(settings: Settings, extra: Mapping[str, str]) -> ssl.SSLContext:
    """The TLS context for Kafka: CA, client certificate and key, hostname checking."""
    cafile = settings.kafka_ssl_cafile
    certfile = settings.kafka_ssl_certfile
    if "ssl.truststore.location" in extra:
        cafile = _store_path("ssl.truststore.location", extra["ssl.truststore.location"], settings)
    if "ssl.keystore.location" in extra:
        certfile = _store_path("ssl.keystore.location", extra["ssl.keystore.location"], settings)
    keyfile = settings.kafka_ssl_keyfile
    if keyfile is not None and certfile is None:
        raise ConfigError("KTB_KAFKA_SSL_KEYFILE is set without KTB_KAFKA_SSL_CERTFILE")
    password = settings.kafka_ssl_key_password
    try:
        context = create_ssl_context(
            cafile=_readable(cafile, "Kafka CA file") if cafile else None,
            certfile=_readable(certfile, "Kafka client certificate") if certfile else None,
            keyfile=_readable(keyfile, "Kafka client key") if keyfile else None,
            password=password.get_secret_value() if password else None,
        )
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load the Kafka TLS files: {exc}") from exc
    algorithm = extra.get("ssl.endpoint.identification.algorithm")
    check_hostname = settings.kafka_ssl_check_hostname
    if algorithm is not None:
        if algorithm.lower() not in ("", "https"):
            raise ConfigError(
                "Kafka client option 'ssl.endpoint.identification.algorithm' must be "
                f"'https' or empty, not {algorithm!r}"
            )
        check_hostname = check_hostname and algorithm.lower() == "https"
    context.check_hostname = check_hostname
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """aiokafka arguments for the configured security protocol, SASL, TLS and extra options."""
    extra = checked_options(settings)
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    options.update(
        {
            arg: convert(name, extra[name])
            for name, (arg, convert) in PASS_THROUGH.items()
            if name in extra
        }
    )
    sasl = (
        settings.kafka_sasl_mechanism,
        settings.kafka_sasl_username,
        settings.kafka_sasl_password,
    )
    if protocol in SASL_PROTOCOLS:
        mechanism, username, password = sasl
        missing = [
            f"KTB_KAFKA_SASL_{name}"
            for name, value in zip(("MECHANISM", "USERNAME", "PASSWORD"), sasl, strict=True)
            if not value
        ]
        if missing or mechanism is None or password is None:
            raise ConfigError(f"security protocol {protocol} needs {', '.join(missing)}")
        options.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password.get_secret_value(),
        )
    elif any(sasl):
        raise ConfigError(
            f"SASL settings are set but KTB_KAFKA_SECURITY_PROTOCOL is {protocol}; "
            "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
        )
    tls_files = (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = kafka_ssl_context(settings, extra)
    elif any(tls_files) or TLS_OPTIONS & set(extra):
        raise ConfigError(
            f"TLS settings are set but KTB_KAFKA_SECURITY_PROTOCOL is {protocol}; "
            "use SSL or SASL_SSL"
        )
    return options


def _bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Kafka bootstrap address {entry.strip()!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


async def diagnose(settings: Settings, timeout_ms: int = 5000) -> KafkaAuthError | None:
    """Why clients cannot connect, when the cause is credentials or TLS; ``None`` otherwise.

    aiokafka reports a refused login only as "unable to bootstrap"; connecting once
    to each bootstrap server directly brings back the broker's actual answer.
    """
    options = kafka_options(settings)
    options.pop("client_id", None)
    options["request_timeout_ms"] = timeout_ms
    for name in ("retry_backoff_ms", "metadata_max_age_ms", "connections_max_idle_ms"):
        options.pop(name, None)
    who = (
        f"SASL {settings.kafka_sasl_mechanism} as user {settings.kafka_sasl_username!r}"
        if settings.kafka_security_protocol in SASL_PROTOCOLS
        else settings.kafka_security_protocol
    )
    for host, port in _bootstrap_hosts(settings.kafka_bootstrap):
        where = f"{host}:{port}"
        try:
            conn = await create_conn(host, port, **options)
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
            return KafkaAuthError(
                f"Kafka authentication failed at {where} ({who}): {exc}. "
                "Check KTB_KAFKA_SASL_MECHANISM, KTB_KAFKA_SASL_USERNAME and "
                "KTB_KAFKA_SASL_PASSWORD.",
                bootstrap=settings.kafka_bootstrap,
            )
        except ssl.SSLError as exc:
            return KafkaAuthError(
                f"Kafka TLS handshake failed at {where}: {exc}. "
                "Check KTB_KAFKA_SSL_CAFILE, the client certificate and the broker's name.",
                bootstrap=settings.kafka_bootstrap,
            )
        except (KafkaError, OSError, TimeoutError):
            continue
        conn.close()
    return None
