"""Django: the layer in a Channels app (WebsocketCommunicator), and the
transactional outbox on Django's own connection. Settings are in conftest."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers, get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connection, transaction
from django.urls import path

import chanlite
import chanlite.django
from chanlite.layer import SQLiteChannelLayer


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """The Channels tutorial's chat consumer."""

    async def connect(self) -> None:
        self.room = f"chat_{self.scope['url_route']['kwargs']['room_name']}"
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            self.room, {"type": "chat.message", "message": content["message"]}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"message": event["message"]})


application = URLRouter([path("ws/chat/<str:room_name>/", ChatConsumer.as_asgi())])


@pytest.fixture
def django_layer() -> Iterator[SQLiteChannelLayer]:
    layer = get_channel_layer()
    assert isinstance(layer, SQLiteChannelLayer)
    yield layer
    async_to_sync(layer.flush)()
    async_to_sync(layer.close)()
    channel_layers.backends.clear()


async def test_websocket_chat_between_two_clients(django_layer: SQLiteChannelLayer) -> None:
    alice = WebsocketCommunicator(application, "/ws/chat/lobby/")
    bob = WebsocketCommunicator(application, "/ws/chat/lobby/")
    elsewhere = WebsocketCommunicator(application, "/ws/chat/other/")
    for client in (alice, bob, elsewhere):
        connected, _ = await client.connect()
        assert connected
    await alice.send_json_to({"message": "hello bob"})
    assert await bob.receive_json_from(timeout=5) == {"message": "hello bob"}
    assert await alice.receive_json_from(timeout=5) == {"message": "hello bob"}
    await bob.send_json_to({"message": "hi alice"})
    assert await alice.receive_json_from(timeout=5) == {"message": "hi alice"}
    assert await bob.receive_json_from(timeout=5) == {"message": "hi alice"}
    for client in (alice, bob, elsewhere):
        await client.disconnect()
    # The other room heard nothing: its consumer's channel holds no message.
    conn = chanlite.connect(django_layer.database_path())
    assert conn.execute("SELECT count(*) FROM chanlite_channels").fetchone()[0] == 0
    conn.close()


def test_django_connection_has_extension() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT chanlite_version()")
        assert str(cursor.fetchone()[0]).startswith("v")
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_transactional_send_rolled_back_is_never_delivered(
    django_layer: SQLiteChannelLayer,
) -> None:
    # Django's database lives for the whole pytest session: start from an
    # empty table, so that the test holds however often it runs in one.
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS orders")
        cursor.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
    other = sqlite3.connect(django_layer.database_path())

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders(item) VALUES ('lost')")
        chanlite.django.send("outbox", {"type": "order.created", "item": "lost"})
        raise Boom

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders(item) VALUES ('kept')")
        chanlite.django.send("outbox", {"type": "order.created", "item": "kept"})
        # Not visible to anybody else before the commit.
        assert other.execute("SELECT count(*) FROM chanlite_message").fetchone()[0] == 0

    assert async_to_sync(django_layer.receive)("outbox") == {
        "type": "order.created",
        "item": "kept",
    }
    assert other.execute("SELECT count(*) FROM chanlite_message").fetchone()[0] == 0
    assert other.execute("SELECT item FROM orders").fetchall() == [("kept",)]
    other.close()


def test_transactional_group_send_and_channel_full(django_layer: SQLiteChannelLayer) -> None:
    with transaction.atomic():
        chanlite.django.group_add("watchers", "watcher-1")
        assert chanlite.django.group_send("watchers", {"type": "w"}) == 1
    assert async_to_sync(django_layer.receive)("watcher-1") == {"type": "w"}
    for _ in range(django_layer.capacity):
        chanlite.django.send("full-up", {"type": "x"})
    with pytest.raises(ChannelFull), transaction.atomic():
        chanlite.django.send("full-up", {"type": "x"})
    with pytest.raises(TypeError):
        chanlite.django.send("bad name", {"type": "x"})


def test_connection_created_handler() -> None:
    from django.db.backends.signals import connection_created

    chanlite.django.install()
    receivers = [r[1]() for r in connection_created.receivers]
    assert chanlite.django.load_extension in receivers
    conn = sqlite3.connect(":memory:")

    class Wrapper:
        vendor = "sqlite"

    wrapper = Wrapper()
    wrapper.connection = conn  # type: ignore[attr-defined]
    chanlite.django.load_extension(None, wrapper)  # type: ignore[arg-type]
    assert conn.execute("SELECT chanlite_version()").fetchone()[0]
    conn.close()
    connection_created.disconnect(dispatch_uid="chanlite.load_extension")
