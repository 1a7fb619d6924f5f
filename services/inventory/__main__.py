"""``python -m services.inventory server|worker``."""

from services.cli import service_main

service_main("inventory")
