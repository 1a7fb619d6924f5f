"""``python -m services.shipping server|worker``."""

from services.cli import service_main

service_main("shipping")
