"""Django Channels' own test tools against chanlite.

- channels.testing.WebsocketCommunicator with the chat demo's consumer
  (examples/django_chat): two communicators in one room, a message from one
  reaches the other, and a group_send from outside the consumers (as a view or
  a signal handler does) reaches both. Over each form of the layer: on
  Django's database (the session's settings, conftest.py), on a file of its
  own, and in test mode (":memory:"), which fits here because every
  communicator runs in this one process.
- channels.testing.ChannelsLiveServerTestCase driving headless chromium with
  Selenium through the chat, in two tabs (live_chat/tests_live.py). The live
  server is another process (daphne, forked by multiprocessing), so it runs
  with settings of its own (live_chat/settings.py: a test database file and a
  channel layer file, not ":memory:") under `python -m django test`, in a
  subprocess, as a project would run it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "examples" / "django_chat"
if str(DEMO) not in sys.path:
    sys.path.append(str(DEMO))

from chat.routing import websocket_urlpatterns  # noqa: E402 (the demo, on sys.path above)

TIMEOUT = 10
LIVE_TIMEOUT = 240


@pytest.fixture(params=["database", "file", "memory"])
async def layer_config(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """CHANNEL_LAYERS for one form of the layer; its layer is closed after."""
    config: dict[str, Any] = {
        "database": {"database": "default"},
        "file": {"path": str(tmp_path / "channels.sqlite3")},
        "memory": {"path": ":memory:"},
    }[request.param]
    setting = {"default": {"BACKEND": "chanlite.layer.SQLiteChannelLayer", "CONFIG": config}}
    # channels drops its cached layers when CHANNEL_LAYERS changes.
    with override_settings(CHANNEL_LAYERS=setting):
        yield request.param
        layer = get_channel_layer()
        assert layer is not None
        await layer.flush()
        await layer.close()  # type: ignore[attr-defined]
        channel_layers.backends.clear()


async def _joined(room: str) -> tuple[WebsocketCommunicator, int]:
    """A connected communicator in the room, and the pid the consumer sent."""
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/chat/{room}/")
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    hello = await communicator.receive_json_from(timeout=TIMEOUT)
    return communicator, hello["pid"]


async def test_two_communicators_in_one_room(layer_config: str) -> None:
    alice, pid_a = await _joined("lobby")
    bob, pid_b = await _joined("lobby")
    assert pid_a == pid_b == os.getpid()
    try:
        for i in range(5):
            sender = alice if i % 2 == 0 else bob
            text = f"{layer_config} message {i}"
            await sender.send_to(text_data=json.dumps({"message": text}))
            # Both members get it, the other one and the sender.
            assert await alice.receive_json_from(timeout=TIMEOUT) == {"message": text}
            assert await bob.receive_json_from(timeout=TIMEOUT) == {"message": text}
        # Nothing more is on its way to either.
        assert await alice.receive_nothing(timeout=0.2)
        assert await bob.receive_nothing(timeout=0.2)
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_other_rooms_do_not_hear(layer_config: str) -> None:
    alice, _ = await _joined("one")
    carol, _ = await _joined("two")
    try:
        await alice.send_to(text_data=json.dumps({"message": "only for one"}))
        assert await alice.receive_json_from(timeout=TIMEOUT) == {"message": "only for one"}
        assert await carol.receive_nothing(timeout=0.3)
    finally:
        await alice.disconnect()
        await carol.disconnect()


async def test_group_send_from_outside_the_consumers(layer_config: str) -> None:
    """What a view, a signal handler or a task does: group_send on the layer
    the consumers use, here through async_to_sync from a worker thread."""
    alice, _ = await _joined("news")
    bob, _ = await _joined("news")
    layer = get_channel_layer()
    assert layer is not None
    send = async_to_sync(layer.group_send)
    try:
        await asyncio.to_thread(
            send, "chat_news", {"type": "chat.message", "message": "from a view"}
        )
        assert await alice.receive_json_from(timeout=TIMEOUT) == {"message": "from a view"}
        assert await bob.receive_json_from(timeout=TIMEOUT) == {"message": "from a view"}
    finally:
        await alice.disconnect()
        await bob.disconnect()


def test_live_server_selenium_chat(tmp_path: Path) -> None:
    """live_chat/tests_live.py under `python -m django test`, with its own
    settings, in a subprocess; every test in it must pass."""
    env = {
        **os.environ,
        "CHANLITE_TEST_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "live_chat.settings",
        "PYTHONPATH": os.pathsep.join(
            [
                str(HERE),
                str(DEMO),
                *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)),
            ]
        ),
    }
    log = tmp_path / "django-test.log"
    with log.open("w") as out:
        try:
            run = subprocess.run(
                [sys.executable, "-m", "django", "test", "-v", "2", "live_chat.tests_live"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=LIVE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"not finished in {LIVE_TIMEOUT} s:\n{log.read_text(errors='replace')}")
    output = log.read_text(errors="replace")
    print(output)
    assert run.returncode == 0, output
    ran = re.search(r"^Ran (\d+) tests?", output, re.MULTILINE)
    assert ran is not None and int(ran.group(1)) == 3, output
    assert re.search(r"^OK$", output, re.MULTILINE), output
