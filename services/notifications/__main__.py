"""``python -m services.notifications server|worker``."""

from services.cli import service_main

service_main("notifications")
