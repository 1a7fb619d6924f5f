"""``python -m services.orders worker``."""

from services.cli import service_main

service_main("orders")
