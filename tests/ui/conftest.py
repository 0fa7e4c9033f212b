"""Browser fixtures: Debian's chromium driven by Playwright for Python (Playwright's own
browser download cannot run here); scripts/chromium.sh installs both."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streams.brokers.ports import free_port

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


async def no_alerts(request: web.Request) -> web.Response:
    """GET /api/alerts of a server without an alert engine: none, no flood."""
    return web.json_response({"alerts": [], "flood": False})


@contextlib.contextmanager
def serve_app(app: web.Application, each_second: Callable[[], None] | None = None) -> Iterator[str]:
    """Serve ``app`` on a loopback port from a thread of its own (the browser tests drive the
    page from the main thread); ``each_second`` runs on the server's loop once a second.
    Yields the base URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(app)

    async def serve() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        while True:
            await asyncio.sleep(1.0)
            if each_second is not None:
                each_second()

    def run() -> None:
        asyncio.set_event_loop(loop)
        with contextlib.suppress(RuntimeError):  # stopped on leaving the context
            loop.run_until_complete(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
