"""``python -m services.payments server|worker``."""

from services.common import service_main

service_main("payments")
