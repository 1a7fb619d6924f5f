"""``python -m services.notifications server|worker``."""

from services.common import service_main

service_main("notifications")
