"""The chat demo on three simulated machines (issue 10, item 4), in a real
browser: three chanlite-node processes on 127.0.0.1, .2 and .3, three daphne
servers each configured with a different node first (whose wake hub it
watches), and a page on each. A message typed on one page shows on the other
two; the leader node is SIGKILLed, and after the election a message typed on
another page still shows on all three.

Run by the nox session ``cluster`` (marker ``cluster``), like
examples/cluster/demo.sh by hand."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from helpers import chromium, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.cluster

ServeDemo = Callable[[list[dict[str, str]]], contextlib.AbstractContextManager[list[int]]]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

#: How long a message may take to show once the cluster has lost its leader:
#: the election, then the layer's retries (measured: a few seconds).
AFTER_ELECTION_MS = 60_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    from nodes import Cluster

    (tmp_path / "nodes").mkdir()
    with Cluster(workdir=tmp_path / "nodes") as running:
        yield running


def _say(page: Page, text: str) -> None:
    page.locator("#chat-message-input").fill(text)
    page.locator("#chat-message-input").press("Enter")


def test_chat_survives_the_leader_on_three_machines(
    cluster: Any,
    demo_servers_with: ServeDemo,
) -> None:
    from playwright.sync_api import expect

    addresses = cluster.addresses
    envs = [
        {"CHANLITE_CLUSTER": ",".join([addresses[i], *addresses[:i], *addresses[i + 1 :]])}
        for i in range(3)
    ]
    errors: list[str] = []
    with demo_servers_with(envs) as ports, chromium() as browser:
        pages = [_open_room(browser, port, errors) for port in ports]
        for page, port in zip(pages, ports, strict=True):
            expect(page.locator("#port")).to_have_text(str(port))

        first = f"before {uuid.uuid4().hex[:8]}"
        _say(pages[0], first)
        for page in pages:
            expect(page.locator("#chat-log")).to_have_value(f"{first}\n")

        cluster.kill(cluster.leader())
        second = f"after {uuid.uuid4().hex[:8]}"
        _say(pages[1], second)
        for page in pages:
            expect(page.locator("#chat-log")).to_have_value(
                f"{first}\n{second}\n", timeout=AFTER_ELECTION_MS
            )
        third = f"and on {uuid.uuid4().hex[:8]}"
        _say(pages[2], third)
        for page in pages:
            expect(page.locator("#chat-log")).to_have_value(f"{first}\n{second}\n{third}\n")
    assert errors == [], errors


def _open_room(browser: Browser, port: int, errors: list[str]) -> Page:
    return open_page(
        browser, f"http://127.0.0.1:{port}/chat/lobby/", "body[data-connected='yes']", errors
    )
