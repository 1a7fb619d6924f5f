"""Pure parts of the console: session tokens and CSRF, the page at every console path,
and ``/docs`` and the console's assets served from this process (no other host)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from bridge.api.app import create_app
from bridge.api.auth import CSRF_HEADER, Caller, KeyRing, SessionSigner, hash_key
from bridge.api.problems import Problem
from bridge.settings import Settings

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


def test_a_session_token_is_signed_and_expires():
    signer = SessionSigner(b"s" * 32, ttl_s=60)
    token, session = signer.issue("sha256:abc", now=1000)
    assert session.expires == 1060 and len(session.csrf) >= 24
    assert signer.verify(token, now=1059) == session
    assert signer.verify(token, now=1060) is None
    payload, _, mac = token.partition(".")
    assert signer.verify(f"{payload}x.{mac}", now=1001) is None
    assert signer.verify(f"{payload}.{mac[:-2]}", now=1001) is None
    assert signer.verify("garbage", now=1001) is None
    assert SessionSigner(b"t" * 32).verify(token, now=1001) is None
    # A well-signed payload that is not a session is refused, not an error.
    bad = "e30"  # base64url of "{}"
    assert signer.verify(f"{bad}.{signer._mac(bad)}", now=1001) is None


def test_a_session_stands_for_its_key_and_needs_its_csrf_token_to_change_anything():
    ring = KeyRing({hash_key("k1"): "acme"}, sessions=SessionSigner(b"s" * 32))
    token, session, tenant = ring.sign_in("k1")
    assert tenant == "acme"
    assert ring.authenticate(None, token, "GET") == Caller("acme", True)
    assert ring.authenticate(None, token, "POST", session.csrf) == Caller("acme", True)
    for method, csrf in (("POST", None), ("POST", "wrong"), ("DELETE", ""), ("PATCH", None)):
        with pytest.raises(Problem) as refused:
            ring.authenticate(None, token, method, csrf)
        assert refused.value.status == 403 and CSRF_HEADER in (refused.value.detail or "")
    # The bearer header wins over a cookie and needs no CSRF token (no browser sends it).
    other = KeyRing({hash_key("k1"): "acme", hash_key("k2"): "globex"}, sessions=ring.sessions)
    assert other.authenticate("Bearer k2", token, "POST") == Caller("globex", True)
    # Removing the key ends its sessions.
    removed = KeyRing({hash_key("k2"): "globex"}, sessions=ring.sessions)
    with pytest.raises(Problem) as ended:
        removed.authenticate(None, token, "GET")
    assert ended.value.status == 401
    with pytest.raises(Problem) as unknown:
        ring.sign_in("nope")
    assert unknown.value.status == 401
    assert KeyRing({}, enabled=False).authenticate(None, "anything", "POST").authenticated is False


@pytest.fixture(scope="module")
def app_client() -> TestClient:
    """The app without its lifespan: the console's page and assets and /docs need no
    services."""
    return TestClient(create_app(Settings()))


@pytest.mark.parametrize(
    "path",
    [
        "/console",
        "/console/",
        "/console/events/ev-1",
        "/console/processes/acme:order-1",
        "/console/dlq/orders.dlq",
        "/console/replays/replay-0123456789ab",
    ],
)
def test_every_console_path_is_the_one_page(app_client: TestClient, path: str):
    response = app_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<meta name="viewport"' in response.text
    assert "/console/assets/console.js" in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert not EXTERNAL.search(response.text)


def test_console_assets_are_served_and_reach_no_other_host(app_client: TestClient):
    for name, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        response = app_client.get(f"/console/assets/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", response.text), name
    assert "prefers-color-scheme: dark" in app_client.get("/console/assets/console.css").text
    assert app_client.get("/console/assets/__init__.py").status_code == 404


def test_docs_load_swagger_ui_from_this_server(app_client: TestClient):
    page = app_client.get("/docs")
    assert page.status_code == 200
    assert not EXTERNAL.search(page.text)
    assets = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", page.text)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    for asset in assets:
        assert asset.startswith("/docs/assets/"), asset
        assert app_client.get(asset).status_code == 200, asset
    assert app_client.get("/redoc").status_code == 404


def _with_keys(app_client: TestClient, keys: KeyRing) -> TestClient:
    """The session routes need only the keys and the settings of the app's state."""
    app_client.app.state.ktb = SimpleNamespace(keys=keys, settings=Settings())  # type: ignore[attr-defined]
    return app_client


def test_with_authentication_off_there_is_no_sign_in(app_client: TestClient):
    client = _with_keys(app_client, KeyRing({}, enabled=False))
    view = client.get("/session").json()
    assert (view["authentication"], view["signed_in"], view["csrf_token"]) == (False, False, None)
    refused = client.post("/session", json={"api_key": "anything"})
    assert refused.status_code == 409 and "set-cookie" not in refused.headers


def test_signing_in_sets_a_strict_http_only_cookie_and_signing_out_clears_it(
    app_client: TestClient,
):
    # A key long enough that the cookie's random characters cannot contain it by chance.
    key = "console-sign-in-key-7f3c9a"
    client = _with_keys(app_client, KeyRing({hash_key(key): "acme"}))
    assert client.post("/session", json={"api_key": "nope"}).status_code == 401
    form = client.post(
        "/session", content=json.dumps({"api_key": key}), headers={"Content-Type": "text/plain"}
    )
    assert form.status_code == 422 and "set-cookie" not in form.headers
    signed = client.post("/session", json={"api_key": key})
    assert signed.status_code == 200
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and key not in cookie
    view = client.get("/session").json()
    assert (view["signed_in"], view["tenant"]) == (True, "acme")
    assert view["csrf_token"] == signed.json()["csrf_token"]
    out = client.delete("/session")
    assert out.status_code == 204 and "max-age=0" in out.headers["set-cookie"].lower()
    assert client.get("/session").json()["signed_in"] is False
