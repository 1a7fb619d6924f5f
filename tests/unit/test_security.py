"""Kafka and Temporal security settings: the allowlist, SASL/TLS options, Temporal TLS and keys."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.service import GrpcCompression, TLSConfig

from bridge import kafka
from bridge.errors import ConfigError, UnsafeOptionError
from bridge.kafka import security
from bridge.routes import RoutesConfig
from bridge.settings import Settings
from bridge.temporal.client import temporal_connect_options, temporal_tls
from tests.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with a server and a client certificate."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def settings(**values: Any) -> Settings:
    """Settings from explicit values only (the environment must not leak into these tests)."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- the allowlist ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("sasl.jaas.config", "CVE-2023-25194"),
        ("SASL.JAAS.CONFIG", "CVE-2023-25194"),
        ("listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config", "CVE-2023-25194"),
        ("producer.sasl.jaas.config", "CVE-2023-25194"),
        ("config.providers", "config providers"),
        ("config.providers.file.class", "config providers"),
        ("sasl.oauthbearer.token.endpoint.url", "OAuth"),
        ("sasl.oauthbearer.jwks.endpoint.url", "OAuth"),
        ("sasl.login.callback.handler.class", "classes"),
        ("sasl.client.callback.handler.class", "classes"),
        ("interceptor.classes", "classes"),
        ("metric.reporters", "classes"),
    ],
)
def test_dangerous_options_are_refused_by_name(option: str, needle: str) -> None:
    jaas = "com.sun.security.auth.module.JndiLoginModule required user.provider.url=ldap://x;"
    with pytest.raises(UnsafeOptionError) as err:
        kafka.client_options(settings(kafka_client_options={option: jaas}))
    assert err.value.option == option
    assert option in err.value.message
    assert needle in err.value.message


def test_config_provider_references_in_values_are_refused() -> None:
    s = settings(kafka_client_options={"client.id": "${file:/etc/passwd:root}"})
    with pytest.raises(UnsafeOptionError, match="config provider"):
        security.kafka_options(s)


def test_unknown_options_are_refused_with_the_allowed_list() -> None:
    with pytest.raises(UnsafeOptionError) as err:
        security.kafka_options(settings(kafka_client_options={"linger.ms": "5"}))
    assert "not a known client option" in err.value.message
    assert "client.id" in err.value.message


def test_allowed_options_become_client_arguments() -> None:
    s = settings(
        kafka_bootstrap="broker-1:9092,broker-2:9092",
        kafka_client_options={"client.id": "ktb-eu", "request.timeout.ms": "20000"},
    )
    options = kafka.client_options(s)
    assert options["bootstrap_servers"] == "broker-1:9092,broker-2:9092"
    assert options["client_id"] == "ktb-eu"
    assert options["request_timeout_ms"] == 20000
    assert options["security_protocol"] == "PLAINTEXT"


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_numeric_options_must_be_positive_integers(value: str) -> None:
    with pytest.raises(ConfigError, match=r"request\.timeout\.ms"):
        security.kafka_options(settings(kafka_client_options={"request.timeout.ms": value}))


async def test_extra_options_reach_every_client_kind() -> None:
    s = settings(kafka_client_options={"client.id": "ktb-x", "request.timeout.ms": "21000"})
    producer = kafka.producer(s)
    consumer = kafka.consumer(s)
    admin = kafka.admin(s)
    assert producer.client._client_id == "ktb-x"
    assert producer.client._request_timeout_ms == 21000
    assert consumer._client._client_id == "ktb-x"
    assert admin._client._client_id == "ktb-x"


def test_option_refusal_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KTB_KAFKA_CLIENT_OPTIONS", '{"sasl.jaas.config": "x required;", "client.id": "a"}'
    )
    with pytest.raises(UnsafeOptionError, match=r"sasl\.jaas\.config"):
        kafka.client_options(Settings())


# --- key and trust store locations ------------------------------------------------------


def test_store_paths_outside_the_configured_locations_are_refused(
    certs: Certs, tmp_path: Path
) -> None:
    allowed = tmp_path / "tls"
    allowed.mkdir()
    base = {"kafka_security_protocol": "SSL", "kafka_ssl_locations": [allowed]}
    outside = {"ssl.truststore.location": str(certs.ca)}
    with pytest.raises(UnsafeOptionError, match="outside the configured locations"):
        security.kafka_options(settings(**base, kafka_client_options=outside))
    dotdot = {"ssl.truststore.location": str(allowed / ".." / certs.ca.name)}
    with pytest.raises(UnsafeOptionError, match="outside"):
        security.kafka_options(settings(**base, kafka_client_options=dotdot))
    (allowed / "escape.pem").symlink_to(certs.ca)
    link = {"ssl.truststore.location": str(allowed / "escape.pem")}
    with pytest.raises(UnsafeOptionError, match="outside"):
        security.kafka_options(settings(**base, kafka_client_options=link))
    relative = {"ssl.keystore.location": "client.pem"}
    with pytest.raises(UnsafeOptionError, match="absolute"):
        security.kafka_options(settings(**base, kafka_client_options=relative))


def test_store_paths_need_configured_locations(certs: Certs) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_client_options={"ssl.truststore.location": str(certs.ca)},
    )
    with pytest.raises(UnsafeOptionError, match="KTB_KAFKA_SSL_LOCATIONS"):
        security.kafka_options(s)


def test_store_paths_inside_the_locations_load(certs: Certs, tmp_path: Path) -> None:
    allowed = tmp_path / "tls"
    allowed.mkdir()
    ca = allowed / "ca.pem"
    ca.write_bytes(certs.ca.read_bytes())
    keystore = allowed / "client.pem"
    keystore.write_bytes(certs.client_key.read_bytes() + certs.client_cert.read_bytes())
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_locations=[allowed],
        kafka_client_options={
            "ssl.truststore.location": str(ca),
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.type": "PEM",
        },
    )
    context = security.kafka_options(s)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


def test_java_store_types_are_refused(tmp_path: Path) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_client_options={"ssl.truststore.type": "JKS"},
    )
    with pytest.raises(ConfigError, match="must be PEM"):
        security.kafka_options(s)


# --- SASL and TLS settings --------------------------------------------------------------


def test_scram_settings_become_sasl_options() -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ktb",
        kafka_sasl_password="pa55",
    )
    options = security.kafka_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "ktb"
    assert options["sasl_plain_password"] == "pa55"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "pa55" not in repr(s)


def test_sasl_without_credentials_names_what_is_missing() -> None:
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ConfigError) as err:
        security.kafka_options(s)
    assert "KTB_KAFKA_SASL_USERNAME" in err.value.message
    assert "KTB_KAFKA_SASL_PASSWORD" in err.value.message
    assert "KTB_KAFKA_SASL_MECHANISM" not in err.value.message


def test_security_settings_never_silently_ignored(certs: Certs) -> None:
    with pytest.raises(ConfigError, match="SASL settings are set"):
        security.kafka_options(settings(kafka_sasl_username="ktb", kafka_sasl_password="x"))
    with pytest.raises(ConfigError, match="TLS settings are set"):
        security.kafka_options(settings(kafka_ssl_cafile=certs.ca))


def test_tls_context_from_ca_and_client_certificate(certs: Certs) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=certs.ca,
        kafka_ssl_certfile=certs.client_cert,
        kafka_ssl_keyfile=certs.client_key,
    )
    context = security.kafka_options(s)["ssl_context"]
    assert context.check_hostname is True
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ca"),),)]
    off = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=certs.ca,
        kafka_client_options={"ssl.endpoint.identification.algorithm": ""},
    )
    assert security.kafka_options(off)["ssl_context"].check_hostname is False


def test_tls_files_must_exist_and_match(certs: Certs, tmp_path: Path) -> None:
    missing = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="does not exist"):
        security.kafka_options(missing)
    mismatched = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=certs.client_cert,
        kafka_ssl_keyfile=certs.server_key,
    )
    with pytest.raises(ConfigError, match="cannot load the Kafka TLS files"):
        security.kafka_options(mismatched)


# --- Temporal ---------------------------------------------------------------------------


def test_temporal_defaults_are_plaintext_in_the_configured_namespace() -> None:
    options = temporal_connect_options(settings(temporal_namespace="orders-prod"))
    assert options == {
        "namespace": "orders-prod",
        "api_key": None,
        "grpc_compression": GrpcCompression.NONE,
    }


def test_temporal_grpc_compression_is_a_setting() -> None:
    gzip = temporal_connect_options(settings(temporal_grpc_compression="gzip"))
    assert gzip["grpc_compression"] is GrpcCompression.GZIP
    with pytest.raises(ValidationError, match="temporal_grpc_compression"):
        settings(temporal_grpc_compression="zstd")


def test_temporal_api_key_leaves_tls_to_the_sdk_default() -> None:
    options = temporal_connect_options(settings(temporal_api_key="k-123"))
    assert options["api_key"] == "k-123"
    assert "tls" not in options  # the SDK turns TLS on when an API key is given
    forced = temporal_connect_options(settings(temporal_api_key="k", temporal_tls=False))
    assert forced["tls"] is False


def test_temporal_mtls_reads_the_files(certs: Certs) -> None:
    s = settings(
        temporal_tls_ca=certs.ca,
        temporal_tls_cert=certs.client_cert,
        temporal_tls_key=certs.client_key,
        temporal_tls_server_name="temporal.internal",
    )
    tls = temporal_connect_options(s)["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert == certs.ca.read_bytes()
    assert tls.client_cert == certs.client_cert.read_bytes()
    assert tls.client_private_key == certs.client_key.read_bytes()
    assert tls.domain == "temporal.internal"


def test_temporal_tls_misconfigurations(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set together"):
        temporal_tls(settings(temporal_tls_cert=certs.client_cert))
    with pytest.raises(ConfigError, match="KTB_TEMPORAL_TLS is false"):
        temporal_tls(settings(temporal_tls=False, temporal_tls_ca=certs.ca))
    with pytest.raises(ConfigError, match="cannot read"):
        temporal_tls(settings(temporal_tls_ca=tmp_path / "missing.pem"))
    assert temporal_tls(settings(temporal_tls=True)) is True


def test_routes_cannot_name_a_namespace() -> None:
    route = {
        "name": "r",
        "topic": "t",
        "type": "com.example.order.placed",
        "action": "start",
        "workflow": "W",
        "task_queue": "q",
        "workflow_id": "w-{data.order_id}",
        "namespace": "{data.namespace}",
    }
    with pytest.raises(ConfigError, match="namespace"):
        RoutesConfig.parse({"routes": [route]})
