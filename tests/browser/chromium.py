"""Debian's chromium for Playwright: installed on demand by ensure_chromium.sh, skipped where impossible
(a failure when CI=true)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ENSURE = Path(__file__).with_name("ensure_chromium.sh")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true requires the browser tests to run)")
    pytest.skip(reason)


def chromium() -> str:
    """The chromium executable, installing it (apt) if needed; skips or fails with the reason."""
    if not CHROMIUM.exists():
        try:
            done = subprocess.run(["sh", str(ENSURE)], capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            _unavailable(f"cannot install chromium: {err}")
        if not CHROMIUM.exists():
            _unavailable(f"chromium is not installed and {ENSURE.name} could not install it: {done.stderr.strip()[-300:]}")
    return str(CHROMIUM)


def playwright_sync():  # type: ignore[no-untyped-def]
    """``playwright.sync_api.sync_playwright`` or skip/fail when the package is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright==1.65.2)")
    return sync_playwright


@contextlib.contextmanager
def launched() -> Iterator[Any]:
    """A headless chromium driven by Playwright (one per test module: starting one takes ~2 s)."""
    executable = chromium()
    with playwright_sync()() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def neuroglancer() -> Any:
    """The neuroglancer Python package (its bundled client is the viewer the view tests open)."""
    try:
        import neuroglancer as ng
    except ImportError:
        _unavailable("the neuroglancer package is not installed (pip install neuroglancer==2.41.2)")
    return ng
