"""Shipping: one shipment per order (activity ``shipping.create_shipment``)."""

from __future__ import annotations

from dataclasses import dataclass

CREATE_SHIPMENT = "shipping.create_shipment"


@dataclass
class ShipmentRequest:
    """Ship the items of one order."""

    order_id: str
    customer_id: str
    item_count: int


@dataclass
class Shipment:
    """A shipment created for one order."""

    shipment_id: str
    order_id: str
