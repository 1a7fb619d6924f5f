"""Bearer API keys mapped to tenants, and the console's sessions signed in with one.

Only SHA-256 digests of keys are configured (``KTB_API_KEYS``); a presented key
is hashed and compared with every configured digest in constant time.

A browser signs in once with a key (``POST /session``) and then carries an HttpOnly,
SameSite=Strict session cookie instead: a token signed with the session secret that
names the key's digest (so removing the key ends its sessions), an expiry and a CSRF
token. A state-changing request made with the cookie must repeat that CSRF token in
the ``X-CSRF-Token`` header, which only a page of the API's own origin can read
(``GET /session``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.api.problems import Problem
from bridge.store.provenance import Scope

SCHEME = "Bearer"
SESSION_COOKIE = "ktb_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: a cookie request with them needs no CSRF token."""


def hash_key(key: str) -> str:
    """The configuration form of an API key: ``sha256:<hex digest>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key."""
    return "ktb_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``tenant`` is ``None`` only when authentication is off."""

    tenant: str | None
    authenticated: bool

    @property
    def scope(self) -> Scope:
        """The provenance records this caller may read."""
        return Scope(self.tenant, everyone=not self.authenticated)

    def may_see(self, tenant: str | None) -> bool:
        """Whether a resource of ``tenant`` is visible to this caller."""
        return not self.authenticated or tenant == self.tenant


ANONYMOUS = Caller(tenant=None, authenticated=False)


@dataclass(frozen=True)
class Session:
    """What a session cookie carries: the key's digest, when it ends, its CSRF token."""

    digest: str
    expires: int
    """Unix time (seconds) after which the cookie is refused."""
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and checks session tokens: ``<payload>.<HMAC-SHA256 of the payload>``.

    Every API replica that should accept a session needs the same secret
    (``KTB_API_SESSION_SECRET``); without one a process draws its own, and its
    sessions end when it stops.
    """

    def __init__(self, secret: bytes | None = None, ttl_s: float = 8 * 3600) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, digest: str, now: float | None = None) -> tuple[str, Session]:
        """A new session for the key with ``digest``: the cookie's token and its content."""
        issued = time.time() if now is None else now
        session = Session(
            digest=digest, expires=int(issued + self.ttl_s), csrf=secrets.token_urlsafe(24)
        )
        payload = _b64(
            json.dumps({"d": session.digest, "e": session.expires, "c": session.csrf}).encode()
        )
        return f"{payload}.{self._mac(payload)}", session

    def verify(self, token: str, now: float | None = None) -> Session | None:
        """The session ``token`` carries; ``None`` if it is forged, malformed or expired."""
        payload, _, mac = token.partition(".")
        if not payload or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            fields = json.loads(_unb64(payload))
            session = Session(
                digest=str(fields["d"]), expires=int(fields["e"]), csrf=str(fields["c"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= (time.time() if now is None else now):
            return None
        return session


class KeyRing:
    """Configured key digests and their tenants, and the sessions signed in with them."""

    def __init__(
        self,
        digests: Mapping[str, str],
        enabled: bool = True,
        sessions: SessionSigner | None = None,
    ) -> None:
        self.enabled = enabled
        self._digests = [(d.encode(), tenant) for d, tenant in digests.items()]
        self.sessions = sessions or SessionSigner()

    def tenant_of(self, key: str) -> str | None:
        """The tenant of ``key``; every configured digest is compared, in constant time."""
        return self.tenant_of_digest(hash_key(key))

    def tenant_of_digest(self, presented_digest: str) -> str | None:
        """The tenant of the key with this digest, if it is still configured."""
        presented = presented_digest.encode()
        found: str | None = None
        for digest, tenant in self._digests:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    def sign_in(self, key: str) -> tuple[str, Session, str]:
        """A session for ``key``: ``(cookie token, session, tenant)``, or a 401 problem."""
        tenant = self.tenant_of(key)
        if tenant is None:
            raise Problem(401, "unauthorized", "unknown API key")
        token, session = self.sessions.issue(hash_key(key))
        return token, session, tenant

    def session_caller(
        self, token: str, method: str, csrf_token: str | None
    ) -> tuple[Caller, Session]:
        """The caller of a request carrying a session cookie, or a problem: 401 for a
        session that is forged, expired or whose key was removed, 403 for a
        state-changing request without the session's CSRF token."""
        session = self.sessions.verify(token)
        tenant = self.tenant_of_digest(session.digest) if session is not None else None
        if session is None or tenant is None:
            raise Problem(401, "unauthorized", "the session has ended: sign in again")
        if method.upper() not in SAFE_METHODS and not (
            csrf_token and hmac.compare_digest(csrf_token.encode(), session.csrf.encode())
        ):
            raise Problem(
                403, "csrf-token-missing", f"send the session's CSRF token in {CSRF_HEADER}"
            )
        return Caller(tenant=tenant, authenticated=True), session

    def authenticate(
        self,
        authorization: str | None,
        session: str | None = None,
        method: str = "GET",
        csrf_token: str | None = None,
    ) -> Caller:
        """The caller of a request with this ``Authorization`` header or, without one,
        this session cookie (see ``session_caller``); else a 401 problem."""
        if not self.enabled:
            return ANONYMOUS
        challenge = {"WWW-Authenticate": SCHEME}
        if not authorization and session:
            return self.session_caller(session, method, csrf_token)[0]
        if not authorization:
            raise Problem(
                401, "unauthorized", "send `Authorization: Bearer <key>`", headers=challenge
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != SCHEME.lower() or not key.strip():
            raise Problem(401, "unauthorized", "use the Bearer scheme", headers=challenge)
        tenant = self.tenant_of(key.strip())
        if tenant is None:
            raise Problem(401, "unauthorized", "unknown API key", headers=challenge)
        return Caller(tenant=tenant, authenticated=True)
