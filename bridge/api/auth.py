"""Bearer API keys mapped to tenants.

Only SHA-256 digests of keys are configured (``KTB_API_KEYS``); a presented key
is hashed and compared with every configured digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.api.problems import Problem
from bridge.store.provenance import Scope

SCHEME = "Bearer"


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


class KeyRing:
    """Configured key digests and their tenants."""

    def __init__(self, digests: Mapping[str, str], enabled: bool = True) -> None:
        self.enabled = enabled
        self._digests = [(d.encode(), tenant) for d, tenant in digests.items()]

    def tenant_of(self, key: str) -> str | None:
        """The tenant of ``key``; every configured digest is compared, in constant time."""
        presented = hash_key(key).encode()
        found: str | None = None
        for digest, tenant in self._digests:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request with this ``Authorization`` header, or a 401 problem."""
        if not self.enabled:
            return ANONYMOUS
        challenge = {"WWW-Authenticate": SCHEME}
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
