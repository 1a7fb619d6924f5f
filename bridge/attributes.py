"""Custom search attributes the bridge sets on every workflow it starts.

They make processes findable by the event that started them, by tenant, by
business key and by route, through Temporal visibility (UI, ``ktb status``,
the HTTP API), with no lookup table of our own.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

EVENT_ID = SearchAttributeKey.for_keyword("KtbEventId")
TENANT_ID = SearchAttributeKey.for_keyword("KtbTenantId")
BUSINESS_KEY = SearchAttributeKey.for_keyword("KtbBusinessKey")
ROUTE = SearchAttributeKey.for_keyword("KtbRoute")
EVENT_TYPE = SearchAttributeKey.for_keyword("KtbEventType")

SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: "Keyword" for key in (EVENT_ID, TENANT_ID, BUSINESS_KEY, ROUTE, EVENT_TYPE)
}
