"""``python -m services.inventory server|worker``."""

from services.common import service_main

service_main("inventory")
