"""Test mode: CONFIG {"path": ":memory:"} gives a Django project a layer on an
in-memory database shared by the whole process (for Channels' TEST_CONFIG):
no file, no cleanup, the same semantics. The contract and cancellation suites
also run in this mode (their db_path fixtures are parametrised)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import SimpleTestCase, override_settings

from chanlite.layer import SQLiteChannelLayer
from test_django import application

MEMORY_LAYERS = {
    "default": {
        "BACKEND": "chanlite.layer.SQLiteChannelLayer",
        "CONFIG": {"path": ":memory:"},
    },
    "files": {
        "BACKEND": "chanlite.layer.SQLiteChannelLayer",
        "CONFIG": {"path": "/nonexistent/never-opened.sqlite3"},
        "TEST_CONFIG": {"path": ":memory:", "capacity": 50},
    },
}


@override_settings(CHANNEL_LAYERS=MEMORY_LAYERS)
class TestModeChat(SimpleTestCase):
    """A Channels app tested against the in-memory layer, as a project would."""

    def setUp(self) -> None:
        self.files_before = set(os.listdir("."))

    def tearDown(self) -> None:
        layer = get_channel_layer()
        async_to_sync(layer.flush)()
        async_to_sync(layer.close)()
        channel_layers.backends.clear()
        assert set(os.listdir(".")) == self.files_before, "test mode wrote a file"

    async def test_websocket_chat_in_memory(self) -> None:
        layer = get_channel_layer()
        assert isinstance(layer, SQLiteChannelLayer)
        alice = WebsocketCommunicator(application, "/ws/chat/lobby/")
        bob = WebsocketCommunicator(application, "/ws/chat/lobby/")
        assert (await alice.connect())[0]
        assert (await bob.connect())[0]
        await alice.send_json_to({"message": "hello from alice"})
        assert await bob.receive_json_from(timeout=5) == {"message": "hello from alice"}
        assert await alice.receive_json_from(timeout=5) == {"message": "hello from alice"}
        await alice.disconnect()
        await bob.disconnect()
        assert layer.wake_method == "memory"
        assert layer.database_path().startswith("file:") and "mode=memory" in layer.database_path()

    def test_test_config_shares_the_process_database(self) -> None:
        """TEST_CONFIG's layer is a different instance (another capacity) on
        the same in-memory database as every other ':memory:' layer."""
        test_layer = channel_layers.make_test_backend("files")
        default = get_channel_layer()
        assert isinstance(test_layer, SQLiteChannelLayer) and test_layer is not default
        async_to_sync(test_layer.send)("shared-room", {"type": "x", "n": 1})
        assert async_to_sync(default.receive)("shared-room") == {"type": "x", "n": 1}
        async_to_sync(test_layer.close)()


async def test_two_layers_share_one_database() -> None:
    """Two instances: sends, groups and flush of one are seen by the other,
    and a receiver of one waiting (in another thread's event loop, as
    async_to_sync runs it) is woken by a send of the other without polling."""
    sender = SQLiteChannelLayer(path=":memory:")
    receiver = SQLiteChannelLayer(path=":memory:")
    try:
        await sender.flush()
        got: list[dict[str, object]] = []
        waiting = threading.Thread(
            target=lambda: got.append(async_to_sync(receiver.receive)("to-b"))
        )
        waiting.start()
        await asyncio.sleep(0.1)
        assert not got
        await sender.send("to-b", {"type": "m", "n": 1})
        await asyncio.to_thread(waiting.join, 5)
        assert got == [{"type": "m", "n": 1}]
        assert receiver.wake_method == "memory"

        specific = await receiver.new_channel()
        await sender.group_add("room", specific)
        assert await receiver.group_send("room", {"type": "g"}) == 1
        assert await asyncio.wait_for(receiver.receive(specific), 5) == {"type": "g"}

        await receiver.send("left-over", {"type": "m"})
        await sender.flush()
        assert await sender.group_send("room", {"type": "g"}) == 0
        late = asyncio.create_task(receiver.receive("left-over"))
        await asyncio.sleep(0.1)
        assert not late.done(), "flush by one layer did not empty the other's channel"
        late.cancel()
    finally:
        await sender.close()
        await receiver.close()


async def test_data_outlives_close_and_needs_no_file(tmp_path: Path) -> None:
    """The database belongs to the process, not to a layer: closing every
    layer keeps its messages, and nothing is written to disk."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        first = SQLiteChannelLayer(path=":memory:")
        await first.send("kept", {"type": "kept"})
        await first.close()
        second = SQLiteChannelLayer(path=":memory:")
        assert await asyncio.wait_for(second.receive("kept"), 5) == {"type": "kept"}
        await second.close()
        assert os.listdir(tmp_path) == []
    finally:
        os.chdir(cwd)
