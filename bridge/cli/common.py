"""What the replay and dead-letter commands share: settings, running, failing, exiting.

Exit codes: 0 done, 1 Kafka or Temporal failed, 2 bad input with nothing acted on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

try:
    import uvloop
except ImportError:  # a platform without a uvloop build: asyncio's own loop
    uvloop = None  # type: ignore[assignment]

from bridge.errors import BridgeError, ConfigError, InvalidRequestError
from bridge.settings import Settings

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` to stderr and end the command with ``code``."""
    typer.echo(f"error: {message}", err=True)
    done(code)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the non-``None`` overrides applied."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        fail(f"invalid settings: {exc}")


def console_process() -> bool:
    """True when this process is ``ktb`` itself, not a program calling the commands in-process."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return (spec is not None and spec.name == "bridge.__main__") or Path(sys.argv[0]).name == "ktb"


def done(code: int = 0) -> NoReturn:
    """End a command that used a Temporal client.

    The SDK's native threads can abort the interpreter while it finalizes
    (temporalio/sdk-python#300: "PyGILState_Release ... finalizing"), turning a
    finished command into exit code 134. The ``ktb`` process therefore ends here,
    output flushed and logging shut down, without finalizing.
    """
    if console_process():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    raise typer.Exit(code)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on uvloop where it is installed, as every ``ktb`` command does.

    libuv's loop spends less per I/O callback and per wake-up from another thread (the
    Temporal SDK answers from its own) than asyncio's, and a busy bridge pays those per
    event; uvicorn picks the same loop for ``ktb api``.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        return runner.run(coro)


def run(coro: Any) -> Any:
    """Run ``coro`` (``run_loop``); bad input exits 2, other bridge errors 1."""
    try:
        return run_loop(coro)
    except InvalidRequestError as exc:
        fail(exc.message, 2)
    except ConfigError as exc:
        fail(exc.message, 2)
    except BridgeError as exc:
        fail(exc.message, 1)
