"""Configuration of the example services, kept apart from the bridge's settings.

Read from ``KTB_SERVICES_*`` variables. Unless set, each service's HTTP port is
the HTTP API's port (``KTB_API_PORT``) plus a fixed offset, so two local stacks
started with different API ports do not collide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge import Settings

Service = Literal["orders", "inventory", "payments", "shipping", "notifications", "storefront"]
WorkerService = Literal["orders", "inventory", "payments", "shipping"]
"""The services whose worker is a Temporal worker only (notifications consumes Kafka and
hosts ``CustomerDigest`` on ``notifications_queue``)."""
PORT_OFFSETS: dict[str, int] = {
    "orders": 1,
    "inventory": 2,
    "payments": 3,
    "shipping": 4,
    "notifications": 5,
    "storefront": 6,
}


class ServicesConfig(BaseSettings):
    """Ports, task queues, topics and behaviour of the example services."""

    model_config = SettingsConfigDict(env_prefix="KTB_SERVICES_", extra="ignore")

    host: str = "127.0.0.1"
    port_base: int | None = Field(None, description="Ports are base + offset; default KTB_API_PORT")
    orders_port: int | None = None
    inventory_port: int | None = None
    payments_port: int | None = None
    shipping_port: int | None = None
    notifications_port: int | None = None
    storefront_port: int | None = None

    orders_queue: str = "orders"
    inventory_queue: str = "inventory"
    payments_queue: str = "payments"
    shipping_queue: str = "shipping"
    notifications_queue: str = Field(
        "notifications", description="Where the notifications worker hosts CustomerDigest"
    )

    outcome_topic: str = "orders.outcomes"
    compensation_topic: str = "orders.compensations"
    notifications_group: str = "notifications"

    storefront_api_url: str | None = Field(
        None, description="The bridge's HTTP API; default http://KTB_API_HOST:KTB_API_PORT"
    )
    storefront_api_key: SecretStr | None = Field(
        None, description="The storefront's own API key; required when KTB_API_AUTH is on"
    )
    storefront_group: str = Field(
        "storefront", description="Consumer group of the storefront's cache invalidation"
    )
    storefront_workflow_type: str = "OrderFulfillment"
    storefront_customer_attribute: str = Field(
        "CustomerId", description="The search attribute the start-order route sets"
    )
    storefront_part_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of each part of a dashboard"
    )
    storefront_cache_ttl_s: float = Field(30.0, gt=0, description="How long a dashboard is kept")
    storefront_estimate_runs: int = Field(
        50, ge=1, description="Recent runs whose median duration is the estimate"
    )
    cache_url: str | None = Field(
        None,
        validation_alias=AliasChoices("KTB_CACHE_URL", "cache_url"),
        description="KTB_CACHE_URL: redis://... for a cache the storefronts share; "
        "unset: each keeps its own in memory",
    )

    retry_scale: float = Field(1.0, gt=0, description="Shrinks fault retry intervals (tests)")
    default_stock: int = Field(1000, ge=0, description="Stock of a SKU seen for the first time")
    gateway_failure_threshold: int = Field(5, ge=1, description="Failures that open the circuit")
    gateway_reset_s: float = Field(30.0, gt=0, description="How long the circuit stays open")

    def port(self, service: Service, settings: Settings) -> int:
        """The HTTP port of ``service``."""
        explicit: int | None = getattr(self, f"{service}_port")
        if explicit is not None:
            return explicit
        base = self.port_base if self.port_base is not None else settings.api_port
        return base + PORT_OFFSETS[service]

    def url(self, service: Service, settings: Settings) -> str:
        """The base URL of ``service``'s HTTP server."""
        return f"http://{self.host}:{self.port(service, settings)}"

    def api_url(self, settings: Settings) -> str:
        """The base URL of the bridge's HTTP API."""
        return self.storefront_api_url or f"http://{settings.api_host}:{settings.api_port}"

    def task_queue(self, service: WorkerService) -> str:
        """The Temporal task queue of ``service``'s worker."""
        queue: str = getattr(self, f"{service}_queue")
        return queue

    @staticmethod
    def database(service: Service, settings: Settings) -> Path:
        """The SQLite file of ``service`` under the data directory."""
        return settings.data_dir / "services" / f"{service}.db"
