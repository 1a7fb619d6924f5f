"""Inventory: stock levels and per-order reservations (activities ``inventory.*``)."""

from __future__ import annotations

from dataclasses import dataclass

RESERVE = "inventory.reserve"
RELEASE = "inventory.release"


@dataclass
class Item:
    """One order line."""

    sku: str
    quantity: int
    unit_price_cents: int


@dataclass
class ReserveRequest:
    """Reserve the items of one order."""

    order_id: str
    items: list[Item]


@dataclass
class Reservation:
    """Stock held for one order."""

    reservation_id: str
    order_id: str


@dataclass
class ReleaseRequest:
    """Give back the stock held for one order (compensation)."""

    order_id: str
    reservation_id: str
