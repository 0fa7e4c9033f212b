"""Browser fixtures: Debian's chromium driven by Playwright for Python (Playwright's own
browser download cannot run here); scripts/chromium.sh installs both."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Screenshots and measured figures of the browser tests (gitignored).
ARTIFACTS = Path(__file__).with_name("artifacts")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium for one test module.

    Not for the session: Playwright's sync API keeps its event loop running in the main
    thread while it is open, and pytest-asyncio's tests after it could not run theirs.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed: bash scripts/chromium.sh")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"{CHROMIUM} missing: bash scripts/chromium.sh (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class ConsoleLog:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
