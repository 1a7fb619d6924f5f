"""Shared entry point of the example services: ``python -m services.<name> server|worker``."""

from __future__ import annotations

import asyncio
import importlib
import sys

from bridge import Settings, setup_logging


def service_main(name: str, argv: list[str] | None = None) -> None:
    """Dispatch ``worker`` / ``server`` to ``services.<name>.worker|server.main``."""
    args = sys.argv[1:] if argv is None else argv
    modes = ("worker", "server")
    if len(args) != 1 or args[0] not in modes:
        sys.exit(f"usage: python -m services.{name} {{{'|'.join(modes)}}}")
    mode = args[0]
    try:
        module = importlib.import_module(f"services.{name}.{mode}")
    except ModuleNotFoundError:
        sys.exit(f"services.{name} has no {mode} mode")
    settings = Settings()
    setup_logging(settings.log_level, console=settings.log_format == "console")
    asyncio.run(module.main(settings))
