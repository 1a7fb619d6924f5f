"""Custom search attributes the bridge sets on every workflow it starts.

They make processes findable by the event that started them, by tenant, by
business key and by route, through Temporal visibility (UI, ``ktb status``,
the HTTP API), with no lookup table of our own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

EVENT_ID = SearchAttributeKey.for_keyword("KtbEventId")
TENANT_ID = SearchAttributeKey.for_keyword("KtbTenantId")
BUSINESS_KEY = SearchAttributeKey.for_keyword("KtbBusinessKey")
ROUTE = SearchAttributeKey.for_keyword("KtbRoute")
EVENT_TYPE = SearchAttributeKey.for_keyword("KtbEventType")

SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: "Keyword" for key in (EVENT_ID, TENANT_ID, BUSINESS_KEY, ROUTE, EVENT_TYPE)
}


async def register_search_attributes(
    client: Client, extra: Mapping[str, str] | None = None
) -> list[str]:
    """Register the bridge's custom search attributes, and ``extra`` (the routes' own, by
    name and type: ``RoutesConfig.search_attributes``), in the client's namespace; return
    the new ones."""
    namespace = client.namespace
    wanted = {**(extra or {}), **SEARCH_ATTRIBUTES}
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        name: IndexedValueType.Value("INDEXED_VALUE_TYPE_" + _snake(kind).upper())
        for name, kind in wanted.items()
        if name not in listed.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name)
