"""Headless Chromium for the console's browser tests: the system's own (Debian's
``chromium``), driven by Playwright; Playwright's browser downloads are never used.

Without a Chromium the tests are skipped with ``SKIPPED_BROWSER``, and the session's
summary says so loudly (``tests/conftest.py``); ``.ci/run`` installs one first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bridge.settings import REPO_ROOT

SKIPPED_BROWSER = "BROWSER TESTS SKIPPED: no Chromium found"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARTIFACTS = Path(os.environ.get("KTB_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
"""Where tests leave what a person looks at afterwards (screenshots); ignored by git."""

screenshots: list[Path] = []
"""Every screenshot this session saved, for the summary."""


def chromium_executable() -> str | None:
    """``KTB_CHROMIUM`` if set, else the first Chromium on ``PATH``; ``None`` without one
    (or without Playwright)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None
    configured = os.environ.get("KTB_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def skip_reason() -> str:
    """Why the browser tests cannot run here, and what makes them run."""
    return (
        f"{SKIPPED_BROWSER} (install Debian's `chromium`, or set KTB_CHROMIUM to a "
        "Chromium executable; Playwright's own browser downloads are not used)"
    )


def screenshot_path(name: str) -> Path:
    """A file for screenshot ``name`` under ``ARTIFACTS/console``, remembered for the summary."""
    directory = ARTIFACTS / "console"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    screenshots.append(path)
    return path
