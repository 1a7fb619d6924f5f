"""``python -m services.orders server|worker``."""

from services.common import service_main

service_main("orders")
