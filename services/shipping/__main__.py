"""``python -m services.shipping server|worker``."""

from services.common import service_main

service_main("shipping")
