"""The chat demo (examples/django_chat) under every ASGI server Django apps
deploy on, each running two server processes on one chanlite file:

- daphne: two processes, each on its own port;
- uvicorn --workers 2 (workers are spawned, not forked);
- gunicorn -k uvicorn.workers.UvicornWorker --workers 2 --preload, serving
  mysite.asgi_preload, which creates and uses the channel layer at import:
  the workers are forked from a master whose layer has already sent,
  received and used a group;
- hypercorn --workers 2.

In a real headless chromium (as test_browser.py), pages are opened until two
of them have their WebSockets held by two different server processes (the
consumer sends its os.getpid() on connect); then messages typed in each page
must show in the other, every one, in order."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import TIMEOUT_MS, chromium, free_ports, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

DEMO = Path(__file__).resolve().parents[2] / "examples" / "django_chat"
START_TIMEOUT = 45.0
# Pages opened, at most, looking for two different server processes.
MAX_PAGES = 30
MESSAGES = 6


def _daphne(ports: list[int]) -> list[list[str]]:
    return [
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(p), "mysite.asgi:application"]
        for p in ports
    ]


def _uvicorn(ports: list[int]) -> list[list[str]]:
    return [
        [
            sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(ports[0]),
            "--workers", "2", "mysite.asgi:application",
        ]
    ]  # fmt: skip


def _gunicorn(ports: list[int]) -> list[list[str]]:
    return [
        [
            sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker",
            "--workers", "2", "--preload", "-b", f"127.0.0.1:{ports[0]}", "--no-control-socket",
            "--graceful-timeout", "5", "mysite.asgi_preload:application",
        ]
    ]  # fmt: skip


def _hypercorn(ports: list[int]) -> list[list[str]]:
    return [
        [
            sys.executable, "-m", "hypercorn", "--workers", "2", "-b", f"127.0.0.1:{ports[0]}",
            "mysite.asgi:application",
        ]
    ]  # fmt: skip


# name: (how many ports, the command lines for those ports)
SERVERS: dict[str, tuple[int, Callable[[list[int]], list[list[str]]]]] = {
    "daphne": (2, _daphne),
    "uvicorn": (1, _uvicorn),
    "gunicorn-preload": (1, _gunicorn),
    "hypercorn": (1, _hypercorn),
}


@dataclass
class Served:
    name: str
    urls: list[str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self.logs)


def _wait_ready(served: Served) -> None:
    """Until every URL serves the chat page (bounded): a multi-worker server
    binds its port in the master before its workers can answer."""
    deadline = time.monotonic() + START_TIMEOUT
    for url in served.urls:
        while True:
            for proc in served.procs:
                assert proc.poll() is None, f"{served.name} exited:\n{served.output()}"
            try:
                with urllib.request.urlopen(f"{url}/chat/lobby/", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"{served.name} did not serve {url} in {START_TIMEOUT} s:\n{served.output()}"
            )
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (its master and workers,
    all started here), then SIGKILL to what is left after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture(params=list(SERVERS))
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    name: str = request.param
    nports, commands = SERVERS[name]
    ports = free_ports(nports)
    served = Served(name, [f"http://127.0.0.1:{p}" for p in ports])
    env = {
        **os.environ,
        "CHANLITE_DB": str(tmp_path / "channels.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "PYTHONPATH": os.pathsep.join(
            [str(DEMO), *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))]
        ),
    }
    try:
        for i, command in enumerate(commands(ports)):
            log = tmp_path / f"{name}-{i}.log"
            served.logs.append(log)
            with log.open("wb") as out:
                served.procs.append(
                    subprocess.Popen(
                        command,
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        _wait_ready(served)
        yield served
    finally:
        for proc in served.procs:
            _stop(proc)
        # Shown by pytest when the test failed.
        print(served.output())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as instance:
        yield instance


def _open(browser: Browser, url: str, room: str, errors: list[str]) -> tuple[Page, int]:
    """A room page whose WebSocket is open and joined, and the pid of the
    server process holding that WebSocket."""
    # The consumer joins the room's group, accepts, then sends its pid.
    page = open_page(browser, f"{url}/chat/{room}/", "body[data-pid]", errors)
    pid = page.evaluate("document.body.dataset.pid")
    return page, int(pid)


def test_messages_cross_server_processes(browser: Browser, served: Served) -> None:
    from playwright.sync_api import expect

    room = f"{served.name}-{uuid.uuid4().hex[:8]}"
    pages: dict[int, tuple[Page, list[str]]] = {}
    opened = 0
    while len(pages) < 2 and opened < MAX_PAGES:
        errors: list[str] = []
        page, pid = _open(browser, served.urls[opened % len(served.urls)], room, errors)
        opened += 1
        if pid in pages:
            page.context.close()
        else:
            pages[pid] = (page, errors)
    assert len(pages) == 2, (
        f"{served.name}: {opened} pages were all served by process {list(pages)}"
    )
    (pid_a, (page_a, errors_a)), (pid_b, (page_b, errors_b)) = pages.items()
    server_pids = {p.pid for p in served.procs}
    print(f"{served.name}: pages on processes {pid_a} and {pid_b} after {opened} pages")
    # Workers, not a master that could not have forked them (except daphne,
    # where each process is its own server).
    if served.name != "daphne":
        assert not {pid_a, pid_b} & server_pids

    expect(page_a.locator("#chat-log")).to_have_value("")
    expect(page_b.locator("#chat-log")).to_have_value("")
    log = ""
    for i in range(MESSAGES):
        sender, receiver, pid = (page_a, page_b, pid_a) if i % 2 == 0 else (page_b, page_a, pid_b)
        text = f"message {i} typed on the page of process {pid} {uuid.uuid4().hex[:6]}"
        sender.locator("#chat-message-input").fill(text)
        if i % 3 == 0:
            sender.locator("#chat-message-input").press("Enter")
        else:
            sender.locator("#chat-message-submit").click()
        log += f"{text}\n"
        # Every message so far, in order, in the other process's page ...
        expect(receiver.locator("#chat-log")).to_have_value(log, timeout=TIMEOUT_MS)
        # ... and echoed in the sender's own.
        expect(sender.locator("#chat-log")).to_have_value(log, timeout=TIMEOUT_MS)

    assert errors_a == [] and errors_b == [], errors_a + errors_b
    for page, _ in pages.values():
        page.context.close()
