"""A daphne server of the chat demo (examples/django_chat) SIGKILLed while its
consumers are in a room's group and messages are in flight, as a server dies
under the OOM killer or a lost machine.

Two daphne processes on one chanlite file, with a short expiry and
group_expiry (a settings module of the test's own, importing the demo's).
WebSocket clients (the ``websockets`` package: no page is involved) join one
room, three on server A, then two on server B, and all of them type while A
is SIGKILLed. Then:

- everything B's clients typed reaches both of them, once each, in the same
  order, and what they got from A's clients is, per client, a prefix of what
  it typed (A died with the rest);
- the dead server's memberships and the messages queued for it are counted
  in chanlite's tables (by prefix) until they are gone, which must happen
  within group_expiry (memberships), or group_expiry + expiry (messages),
  of A's last group_add, plus BOUND: while B's clients keep the room busy,
  as a chat does, since sends are what remove expired rows;
- a new daphne started in A's place has a new process-specific prefix and a
  client on it exchanges messages with a new client on B at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from helpers import free_ports

DEMO = Path(__file__).resolve().parents[2] / "examples" / "django_chat"
ROOM = "dying"
GROUP = f"chat_{ROOM}"
EXPIRY = 3.0
GROUP_EXPIRY = 8.0
#: Beyond the expiry, how long the dead server's rows may last: the next send
#: after they expire removes them (B's clients send every PING seconds), on a
#: loaded machine.
BOUND = 5.0
PING = 0.25
START_TIMEOUT = 45.0
WAIT = 20.0  # any one wait for a message, bounded

SETTINGS = f"""
from mysite.settings import *  # noqa: F403

CHANNEL_LAYERS["default"]["CONFIG"].update(  # noqa: F405
    expiry={EXPIRY}, group_expiry={GROUP_EXPIRY}
)
"""


class Server:
    def __init__(self, tmp_path: Path, name: str, port: int) -> None:
        self.url = f"127.0.0.1:{port}"
        self.log = tmp_path / f"daphne-{name}.log"
        env = {
            **os.environ,
            "CHANLITE_DB": str(tmp_path / "channels.sqlite3"),
            "DJANGO_SETTINGS_MODULE": "dying_settings",
            "PYTHONPATH": os.pathsep.join(
                [
                    str(tmp_path),
                    str(DEMO),
                    *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)),
                ]
            ),
        }
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "mysite.asgi:application"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"daphne exited:\n{self.log.read_text()}"
            page = f"http://{self.url}/chat/{ROOM}/"
            with contextlib.suppress(OSError), urllib.request.urlopen(page, timeout=2) as r:
                if r.status == 200:
                    return
            assert time.monotonic() < deadline, f"daphne not serving:\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class Client:
    """One WebSocket in the room: what it typed, and what it got, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.typed: list[str] = []
        self.got: list[str] = []
        self.pid = 0
        self.arrived = asyncio.Event()

    async def connect(self, server: Server) -> None:
        self.ws = await connect(f"ws://{server.url}/ws/chat/{ROOM}/")
        # The consumer has joined the group when it sends its pid.
        self.pid = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT))["pid"]
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # the server died: nothing more comes
            async for text in self.ws:
                self.got.append(json.loads(text)["message"])
                self.arrived.set()

    async def say(self, text: str) -> None:
        await self.ws.send(json.dumps({"message": text}))
        self.typed.append(text)

    async def wait_for(self, texts: list[str]) -> None:
        """Until every one of texts has arrived (bounded)."""
        deadline = time.monotonic() + WAIT
        while not set(texts) <= set(self.got) and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.reader.cancel()


def count(db: Path, sql: str, *params: object) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    finally:
        conn.close()


def prefixes(db: Path) -> set[str]:
    """The process-specific prefixes (``specific.<hex>!``) with members in the room."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute("SELECT channel FROM chanlite_group WHERE group_name = ?", (GROUP,))
        return {channel.split("!")[0] + "!" for (channel,) in rows}
    finally:
        conn.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """A and B, serving; the test appends the one it starts in A's place."""
    (tmp_path / "dying_settings.py").write_text(SETTINGS)
    started = [Server(tmp_path, name, port) for name, port in zip("ab", free_ports(2), strict=True)]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


async def type_until(clients: list[Client], stop: asyncio.Event, every: float) -> None:
    n = 0
    while not stop.is_set():
        for client in clients:
            await client.say(f"{client.name}:{n}")
        n += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def scenario(tmp_path: Path, servers: list[Server]) -> None:
    a, b = servers
    db = tmp_path / "channels.sqlite3"
    on_a = [Client(f"a{i}") for i in range(3)]
    for client in on_a:
        await client.connect(a)
        assert client.pid == a.proc.pid
    a_joined = time.time()  # every membership of A's expires by a_joined + GROUP_EXPIRY
    (dead_prefix,) = prefixes(db)
    on_b = [Client(f"b{i}") for i in range(2)]
    for client in on_b:
        await client.connect(b)
        assert client.pid == b.proc.pid
    assert count(db, "SELECT count(*) FROM chanlite_group WHERE channel GLOB ?", dead_prefix + "*")

    # Everybody types; A dies in the middle of it.
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    typing_a = asyncio.create_task(type_until(on_a, stop_a, 0.05))
    typing_b = asyncio.create_task(type_until(on_b, stop_b, 0.05))
    await asyncio.sleep(0.5)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    a2 = Server(tmp_path, "a2", free_ports(1)[0])
    servers.append(a2)
    await asyncio.sleep(1.0)
    stop_b.set()
    stop_a.set()
    await asyncio.gather(typing_a, typing_b, return_exceptions=True)

    typed_on_b = [text for client in on_b for text in client.typed]
    for client in on_b:
        await client.wait_for(typed_on_b)
    first, second = on_b
    for client in on_b:
        from_b = [m for m in client.got if m.split(":")[0].startswith("b")]
        assert sorted(from_b) == sorted(typed_on_b), f"{client.name} lost or doubled messages"
        for sender in on_b:
            mine = [m for m in from_b if m.startswith(sender.name + ":")]
            assert mine == sender.typed, f"{client.name} got {sender.name}'s out of order"
        for sender in on_a:
            theirs = [m for m in client.got if m.startswith(sender.name + ":")]
            assert theirs == sender.typed[: len(theirs)], f"{sender.name}'s, out of order or twice"
    # One group_send writes to every member in one transaction: one order for all.
    assert first.got == second.got

    # The dead server's rows, counted until gone, while B's clients chat on.
    stop_ping = asyncio.Event()
    pinging = asyncio.create_task(type_until(on_b[:1], stop_ping, PING))
    restarted = asyncio.get_running_loop().run_in_executor(None, a2.wait_ready)
    members_gone = messages_gone = None
    timeline = []
    deadline = a_joined + GROUP_EXPIRY + EXPIRY + BOUND + 5
    while (members_gone is None or messages_gone is None) and time.time() < deadline:
        members = count(
            db, "SELECT count(*) FROM chanlite_group WHERE channel GLOB ?", dead_prefix + "*"
        )
        messages = count(db, "SELECT count(*) FROM chanlite_message WHERE queue = ?", dead_prefix)
        now = time.time() - a_joined
        timeline.append((round(now, 2), members, messages))
        if members == 0 and members_gone is None:
            members_gone = now
        if messages == 0 and members_gone is not None and messages_gone is None:
            messages_gone = now
        await asyncio.sleep(0.1)
    stop_ping.set()
    await pinging
    print(f"dead server's (members, messages) by seconds after its last join: {timeline}")
    print(f"memberships gone after {members_gone} s, messages after {messages_gone} s")
    assert members_gone is not None and members_gone <= GROUP_EXPIRY + BOUND, timeline
    assert messages_gone is not None and messages_gone <= GROUP_EXPIRY + EXPIRY + BOUND, timeline

    # A new server in A's place: a new prefix, and it works at once.
    await restarted
    newcomer, partner = Client("new"), Client("partner")
    await newcomer.connect(a2)
    await partner.connect(b)
    assert newcomer.pid == a2.proc.pid
    assert prefixes(db) - {dead_prefix} and dead_prefix not in prefixes(db)
    new_prefixes = prefixes(db)
    assert len(new_prefixes) == 2, new_prefixes  # B's and the new server's
    await newcomer.say("new:hello")
    await partner.say("partner:hello")
    for client in (newcomer, partner):
        await client.wait_for(["new:hello", "partner:hello"])
        assert sorted(client.got) == ["new:hello", "partner:hello"], client.got
    for client in [*on_a, *on_b, newcomer, partner]:
        await client.close()


def test_a_server_killed_mid_chat(servers: list[Server], tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path, servers))
