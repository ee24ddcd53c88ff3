"""The chat demo (examples/django_chat) in a real browser: Debian's chromium,
headless, driven by playwright (the PyPI package; its wheel carries its own
driver, and it uses the system chromium, never a downloaded one). Two pages,
one on each of the two daphne processes sharing one chanlite file: a message
typed on one page shows in the other page's log, and in its own.

Nothing here skips: without chromium or playwright the test fails and says
to run tests/run-all.sh, which installs both."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import TIMEOUT_MS, chromium, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as instance:
        yield instance


def _open_room(browser: Browser, port: int, errors: list[str]) -> Page:
    # room.html marks the body once its WebSocket is open; the consumer joins
    # the room's group before it accepts, so the page is in the room now.
    return open_page(
        browser, f"http://127.0.0.1:{port}/chat/lobby/", "body[data-connected='yes']", errors
    )


def test_message_typed_on_one_server_shows_on_the_other(
    browser: Browser, demo_servers: list[int], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    port_a, port_b = demo_servers
    errors: list[str] = []
    page_a = _open_room(browser, port_a, errors)
    page_b = _open_room(browser, port_b, errors)
    # Each page shows the port it was served on: two different servers.
    expect(page_a.locator("#port")).to_have_text(str(port_a))
    expect(page_b.locator("#port")).to_have_text(str(port_b))
    expect(page_b.locator("#chat-log")).to_have_value("")

    # Typed on A, sent with the Send button.
    first = f"hello from {port_a} {uuid.uuid4().hex[:8]}"
    page_a.locator("#chat-message-input").fill(first)
    page_a.locator("#chat-message-submit").click()
    expect(page_b.locator("#chat-log")).to_have_value(f"{first}\n", timeout=TIMEOUT_MS)
    expect(page_a.locator("#chat-log")).to_have_value(f"{first}\n", timeout=TIMEOUT_MS)
    expect(page_a.locator("#chat-message-input")).to_have_value("")

    shot = tmp_path / "page-b.png"
    page_b.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
    print(f"screenshot of page B: {shot}")

    # And back: typed on B, sent with the Enter key.
    second = f"hello from {port_b} {uuid.uuid4().hex[:8]}"
    page_b.locator("#chat-message-input").fill(second)
    page_b.locator("#chat-message-input").press("Enter")
    both = f"{first}\n{second}\n"
    expect(page_a.locator("#chat-log")).to_have_value(both, timeout=TIMEOUT_MS)
    expect(page_b.locator("#chat-log")).to_have_value(both, timeout=TIMEOUT_MS)

    assert errors == [], errors
