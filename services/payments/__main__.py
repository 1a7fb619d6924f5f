"""``python -m services.payments server|worker``."""

from services.cli import service_main

service_main("payments")
