"""Schema Registry settings: the URL, basic auth or a bearer token, TLS, secrets kept secret."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bridge.settings import Settings

URL = "https://registry.example:8081/apis/ccompat/v7"


def settings(**values: Any) -> Settings:
    """Settings from explicit values only (the environment must not leak into these tests)."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_no_registry_by_default() -> None:
    s = settings()
    assert s.schema_registry_url is None
    assert s.schema_registry_insecure is False


def test_url_from_the_environment_without_a_trailing_slash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KTB_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8085/apis/ccompat/v7/")
    assert Settings().schema_registry_url == "http://127.0.0.1:8085/apis/ccompat/v7"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://registry:8081", "http:// or https://"),
        ("registry:8081", "http:// or https://"),
        ("http://", "with a host"),
        ("https://user:secret@registry:8081", "must not carry credentials"),
        ("https://registry:8081/?x=1", "no query"),
    ],
)
def test_bad_urls_are_refused(url: str, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle) as err:
        settings(schema_registry_url=url)
    assert "secret" not in str(err.value)


def test_basic_auth_and_token_over_https() -> None:
    basic = settings(
        schema_registry_url=URL, schema_registry_username="ktb", schema_registry_password="pw"
    )
    assert basic.schema_registry_password is not None
    assert basic.schema_registry_password.get_secret_value() == "pw"
    bearer = settings(schema_registry_url=URL, schema_registry_token="tok")
    assert bearer.schema_registry_token is not None
    assert bearer.schema_registry_token.get_secret_value() == "tok"


def test_basic_auth_and_token_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="not both"):
        settings(
            schema_registry_url=URL,
            schema_registry_username="ktb",
            schema_registry_password="pw",
            schema_registry_token="tok",
        )


@pytest.mark.parametrize(
    "values",
    [
        {"schema_registry_username": "ktb"},
        {"schema_registry_password": "pw"},
        {"schema_registry_username": "ktb", "schema_registry_password": ""},
    ],
)
def test_basic_auth_needs_user_and_password(values: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="needs both KTB_SCHEMA_REGISTRY_USERNAME"):
        settings(schema_registry_url=URL, **values)


def test_credentials_over_http_need_the_insecure_opt_in() -> None:
    plain = "http://registry:8081"
    with pytest.raises(ValidationError, match="in the clear"):
        settings(schema_registry_url=plain, schema_registry_token="tok")
    with pytest.raises(ValidationError, match="in the clear"):
        settings(
            schema_registry_url=plain,
            schema_registry_username="ktb",
            schema_registry_password="pw",
        )
    trusted = settings(
        schema_registry_url=plain, schema_registry_token="tok", schema_registry_insecure=True
    )
    assert trusted.schema_registry_url == plain


def test_tls_files_need_https_and_come_in_pairs() -> None:
    with pytest.raises(ValidationError, match="use https://"):
        settings(schema_registry_url="http://registry:8081", schema_registry_ca_file="/ca.pem")
    with pytest.raises(ValidationError, match="needs both KTB_SCHEMA_REGISTRY_CERT_FILE"):
        settings(schema_registry_url=URL, schema_registry_key_file="/key.pem")
    with pytest.raises(ValidationError, match="needs both KTB_SCHEMA_REGISTRY_CERT_FILE"):
        settings(schema_registry_url=URL, schema_registry_cert_file="/cert.pem")
    mtls = settings(
        schema_registry_url=URL,
        schema_registry_ca_file="/ca.pem",
        schema_registry_cert_file="/cert.pem",
        schema_registry_key_file="/key.pem",
    )
    assert mtls.schema_registry_cert_file == "/cert.pem"


@pytest.mark.parametrize(
    "values",
    [
        {"schema_registry_token": "tok"},
        {"schema_registry_username": "ktb", "schema_registry_password": "pw"},
        {"schema_registry_ca_file": "/ca.pem"},
    ],
)
def test_registry_settings_without_a_url_are_refused(values: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="KTB_SCHEMA_REGISTRY_URL is not"):
        settings(**values)


def test_secrets_never_appear_in_the_settings_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTB_SCHEMA_REGISTRY_URL", URL)
    monkeypatch.setenv("KTB_SCHEMA_REGISTRY_USERNAME", "ktb")
    monkeypatch.setenv("KTB_SCHEMA_REGISTRY_PASSWORD", "hunter2-secret")
    s = Settings()
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s.model_dump())
    assert "hunter2-secret" not in s.model_dump_json()
    monkeypatch.delenv("KTB_SCHEMA_REGISTRY_USERNAME")
    monkeypatch.delenv("KTB_SCHEMA_REGISTRY_PASSWORD")
    monkeypatch.setenv("KTB_SCHEMA_REGISTRY_TOKEN", "hunter2-secret")
    with pytest.raises(ValidationError, match="in the clear") as err:
        Settings(schema_registry_url="http://registry:8081")
    assert "hunter2-secret" not in str(err.value)
    with pytest.raises(ValidationError, match="in the clear") as err:
        Settings(schema_registry_url="http://r:1", schema_registry_token="hunter2-secret")
    assert "hunter2-secret" not in str(err.value)
