"""What several test files share: free ports on loopback, and Debian's
chromium launched headless through playwright (its wheel carries the driver;
it uses the system chromium, never a downloaded one). Nothing here skips:
without chromium or playwright a test fails and says how to install them."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("CHANLITE_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = (
    "run the README's test command, tests/run-all.sh, which installs Debian's chromium "
    "and the Python test dependencies (tests/requirements.txt)"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # needed as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every wait in a page is bounded by this (milliseconds).
TIMEOUT_MS = 15_000


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all held open while choosing, so
    none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless chromium, closed on exit. A non-persistent launch: playwright
    gives it a fresh temporary --user-data-dir and removes it on close."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no chromium at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"playwright is not installed ({e}): {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield instance
        finally:
            instance.close()


def open_page(browser: Browser, url: str, ready: str, errors: list[str]) -> Page:
    """A new page at url, in a context of its own, once the selector ready
    is attached; its script errors and console errors go to errors."""
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda e: errors.append(f"{url}: {e}"))
    page.on("console", lambda m: errors.append(f"{url}: {m.text}") if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector(ready, state="attached")
    return page
