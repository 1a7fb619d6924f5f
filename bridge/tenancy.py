"""Tenants: what a tenant id may be, workflow ids scoped by tenant, the ownership check.

The tenant of an event comes from identity (the API key, or the ``ce_tenantid``
header a topic's producers set), never from its data. Workflow ids derived from
data are scoped by it, and every workflow an action reaches must belong to it.
"""

from __future__ import annotations

import re

from bridge.errors import TenantError, TenantMismatchError

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""What a tenant id may look like: it prefixes workflow ids and appears in visibility queries."""
_TENANT = re.compile(TENANT_PATTERN)

TENANT_SEPARATOR = ":"
"""Between the tenant and the routed id in a tenant-scoped workflow id (``acme:order-1``)."""


def valid_tenant(tenant: str) -> bool:
    """Whether ``tenant`` is a well-formed tenant id (``TENANT_PATTERN``)."""
    return _TENANT.fullmatch(tenant) is not None


def checked_tenant(tenant: str | None) -> str | None:
    """``tenant`` unchanged, or ``TenantError`` when it is not a well-formed tenant id."""
    if tenant is not None and not valid_tenant(tenant):
        raise TenantError(
            f"tenant id {tenant[:80]!r} is not 1-64 letters, digits, '.', '_' or '-' "
            "starting with a letter or digit"
        )
    return tenant


def scoped_workflow_id(tenant: str | None, workflow_id: str) -> str:
    """``workflow_id`` in the namespace of ``tenant``: two tenants' ids never collide.

    Tenant ids cannot contain the separator, so the part before the first ``:``
    always names the tenant.
    """
    return f"{tenant}{TENANT_SEPARATOR}{workflow_id}" if tenant else workflow_id


def check_owner(owner: str | None, tenant: str | None, *, workflow_id: str, event_id: str) -> None:
    """``TenantMismatchError`` unless ``owner`` (a workflow's ``KtbTenantId``) is ``tenant``
    (the event's).

    A workflow without ``KtbTenantId`` belongs to no tenant: only events without a
    tenant reach it. The message does not say whose the workflow is.
    """
    if owner != tenant:
        raise TenantMismatchError(
            f"workflow {workflow_id} does not belong to the event's tenant "
            f"({tenant or 'none'}); nothing was done",
            event_id=event_id,
        )
