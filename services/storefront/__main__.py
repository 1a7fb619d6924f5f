"""``python -m services.storefront server``."""

from services.common import service_main

service_main("storefront")
