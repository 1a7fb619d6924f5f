"""A customer's dashboard: its parts fetched in parallel, each within a deadline, and joined.

The parts: ``processes`` (the bridge's API: the customer's order processes through
visibility, then the progress of those in flight), ``orders``, ``payments`` and
``shipping`` (each service's read model over its HTTP server). A part that fails or
misses its deadline is named in ``errors`` and the dashboard is ``partial``; what the
other parts found is still shown.

Tenancy: with authentication on, the API lists only the processes of the storefront
key's tenant, while the services' read models know no tenants. A read model's row is
shown only for an order whose process the API listed, so another tenant's order of
the same customer id never shows; when the processes part failed, the rows are
withheld (and the dashboard is partial).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from services.storefront import Dashboard, OrderView
from services.storefront.estimate import RunningMedian

log = logging.getLogger("services.storefront")
T = TypeVar("T")

RUNNING = "running"
COMPLETED = "completed"
PAGE_SIZE = 100
"""Most processes a dashboard lists (the customer's newest)."""


class PartError(Exception):
    """A part did not answer usably; the message says why, for ``errors``."""


@dataclass
class Upstreams:
    """The HTTP clients of the storefront's sources.

    ``api`` is the bridge's API with the storefront's own key (when authentication is
    on); ``services`` reaches the read models at ``urls`` (``orders``, ``payments``,
    ``shipping``).
    """

    api: httpx.AsyncClient
    services: httpx.AsyncClient
    urls: dict[str, str]

    async def api_json(self, path: str, params: Any = None) -> Any:
        """The API's JSON answer to a GET; ``PartError`` for anything but a 2xx."""
        return await _json(self.api, path, params, "the API")

    async def service_json(self, service: str, path: str, params: Any = None) -> Any:
        """A service's JSON answer to a GET; ``PartError`` for anything but a 2xx."""
        return await _json(self.services, self.urls[service] + path, params, service)

    async def aclose(self) -> None:
        """Close both clients."""
        await self.api.aclose()
        await self.services.aclose()


async def _json(client: httpx.AsyncClient, url: str, params: Any, who: str) -> Any:
    try:
        response = await client.get(url, params=params)
    except httpx.TransportError as exc:
        raise PartError(f"{who} unreachable ({type(exc).__name__})") from exc
    if response.status_code >= 300:
        raise PartError(f"{who} answered {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise PartError(f"{who} answered no JSON") from exc


@dataclass
class Parts:
    """What the parts of one dashboard found, and the errors of those that failed."""

    processes: list[dict[str, Any]] | None = None
    progress: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    orders: list[dict[str, Any]] | None = None
    payments: list[dict[str, Any]] | None = None
    shipping: list[dict[str, Any]] | None = None
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Aggregator:
    """Builds dashboards from the upstreams, feeding the duration estimate on the way."""

    upstreams: Upstreams
    workflow_type: str
    customer_attribute: str
    part_timeout_s: float
    durations: RunningMedian
    scoped: bool
    """Authentication is on: read-model rows need a process the API listed."""

    async def build(self, customer_id: str) -> Dashboard:
        """The customer's dashboard; never raises for a part that failed."""
        found = Parts()
        await asyncio.gather(
            self._processes(found, customer_id),
            self._part(found, "orders", self._rows("orders", "/orders", customer_id)),
            self._part(found, "payments", self._rows("payments", "/payments", customer_id)),
            self._part(found, "shipping", self._rows("shipping", "/shipments", customer_id)),
        )
        return Dashboard(
            customer_id=customer_id,
            generated_at=datetime.now(UTC),
            orders=self._join(found),
            partial=bool(found.errors),
            errors=found.errors,
        )

    async def _part(self, found: Parts, name: str, fetch: Awaitable[Any]) -> None:
        """Run one part within its deadline; what it returns lands in ``found``."""
        try:
            value = await asyncio.wait_for(fetch, self.part_timeout_s)
        except TimeoutError:
            found.errors[name] = f"no answer within {self.part_timeout_s:g} s"
            return
        except PartError as exc:
            found.errors[name] = str(exc)
            return
        setattr(found, name, value)

    async def _processes(self, found: Parts, customer_id: str) -> None:
        """The customer's processes, then the progress of those running, within one
        deadline; when only the progress runs late, the listing stands and ``errors``
        names the progress."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.part_timeout_s
        try:
            found.processes = await asyncio.wait_for(
                self._listing(customer_id), self.part_timeout_s
            )
            running = [p["workflow_id"] for p in found.processes if p.get("status") == RUNNING]
            if running:
                await asyncio.wait_for(
                    self._all_progress(found, running), max(0.0, deadline - loop.time())
                )
        except TimeoutError:
            part = "processes" if found.processes is None else "progress"
            found.errors[part] = f"no answer within {self.part_timeout_s:g} s"
        except PartError as exc:
            found.errors["processes" if found.processes is None else "progress"] = str(exc)

    async def _listing(self, customer_id: str) -> list[dict[str, Any]]:
        page = await self.upstreams.api_json(
            "/processes",
            {
                "type": self.workflow_type,
                "attribute": f"{self.customer_attribute}={customer_id}",
                "page_size": PAGE_SIZE,
            },
        )
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise PartError("the API answered no process page")
        items: list[dict[str, Any]] = page["items"]
        self.feed(items)
        return items

    async def _all_progress(self, found: Parts, running: list[str]) -> None:
        results = await asyncio.gather(*(self._progress(wid) for wid in running))
        found.progress.update(zip(running, results, strict=True))

    async def _rows(self, service: str, path: str, customer_id: str) -> list[dict[str, Any]]:
        rows = await self.upstreams.service_json(service, path, {"customer_id": customer_id})
        if not isinstance(rows, list):
            raise PartError(f"{service} answered no list")
        return rows

    async def _progress(self, workflow_id: str) -> dict[str, Any] | None:
        view = await self.upstreams.api_json("/processes/" + quote(workflow_id, safe=":"))
        progress = view.get("progress") if isinstance(view, dict) else None
        return progress if isinstance(progress, dict) else None

    def feed(self, processes: list[dict[str, Any]]) -> None:
        """Count the completed runs of a listing in the duration estimate."""
        for p in processes:
            if p.get("status") == COMPLETED and p.get("start_time") and p.get("close_time"):
                self.durations.add(
                    p["run_id"],
                    datetime.fromisoformat(p["start_time"]),
                    datetime.fromisoformat(p["close_time"]),
                )

    def _join(self, found: Parts) -> list[OrderView]:
        """One view per order; read-model rows only for listed processes when scoped."""
        processes = found.processes or []
        orders = {r["order_id"]: r for r in found.orders or []}
        by_workflow = {r["workflow_id"]: r["order_id"] for r in orders.values()}
        process_of: dict[str, dict[str, Any]] = {}
        for p in processes:
            order_id = p.get("business_key") or by_workflow.get(p["workflow_id"])
            if order_id is not None:
                process_of.setdefault(order_id, p)
        if self.scoped:
            if found.processes is None:
                for part in ("orders", "payments", "shipping"):
                    if part not in found.errors:
                        found.errors[part] = "withheld: the processes part did not answer"
            allowed: Callable[[str], bool] = process_of.__contains__
        else:
            allowed = _always
        payments = {r["order_id"]: r for r in found.payments or [] if allowed(r["order_id"])}
        shipments = {r["order_id"]: r for r in found.shipping or [] if allowed(r["order_id"])}
        ids = set(process_of) | {o for o in orders if allowed(o)} | set(payments) | set(shipments)
        views = []
        for order_id in ids:
            process = process_of.get(order_id, {})
            order = orders.get(order_id) if allowed(order_id) else None
            workflow_id = process.get("workflow_id") or (order or {}).get("workflow_id")
            views.append(
                OrderView(
                    order_id=order_id,
                    workflow_id=workflow_id,
                    status=(order or {}).get("status") or process.get("status"),
                    process_status=process.get("status"),
                    progress=found.progress.get(workflow_id) if workflow_id else None,
                    started_at=process.get("start_time") or (order or {}).get("created_at"),
                    closed_at=process.get("close_time"),
                    order=order,
                    payment=payments.get(order_id),
                    shipment=shipments.get(order_id),
                )
            )
        newest = datetime.min.replace(tzinfo=UTC)
        views.sort(key=lambda v: (v.started_at or newest, v.order_id), reverse=True)
        return views


def _always(_: str) -> bool:
    return True
