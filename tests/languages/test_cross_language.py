"""Node, Go, Rust and Django on one chanlite database file, each in a process
of its own (tests/languages.sh builds the programs first: examples/node,
examples/go, examples/rust).

- A Node process sends; a Go process, already waiting on channel_wait,
  receives every message, in order.
- A Rust program group_sends JSON to a group whose members are Django
  Channels consumers (the chat demo's, and one that records what its handler
  gets): they receive it as a dict, through the layer.
- A Node program group_sends msgpack with bytes in it: the consumer's dict
  holds Python bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "django_chat"
NODE_EXAMPLE = ROOT / "examples" / "node" / "example.mjs"
GO_EXAMPLE = ROOT / "build" / "languages" / "chanlite-example-go"
RUST_EXAMPLE = ROOT / "build" / "cargo" / "debug" / "chanlite-example"
TIMEOUT = 30
# Node loads the prebuilt file its package carries; Go and Rust, CHANLITE_EXTENSION's.
NODE_ENV = {k: v for k, v in os.environ.items() if k != "CHANLITE_EXTENSION"}

if not settings.configured:
    settings.configure(INSTALLED_APPS=["channels"], USE_TZ=True)
    django.setup()
if str(DEMO) not in sys.path:
    sys.path.append(str(DEMO))

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import channel_layers, get_channel_layer  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402 (the demo, on sys.path above)
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402


class Recorder(AsyncWebsocketConsumer):
    """Joins the group its URL names and keeps each event its handlers get."""

    events: asyncio.Queue[dict[str, Any]]

    async def connect(self) -> None:
        await self.channel_layer.group_add(
            self.scope["url_route"]["kwargs"]["group"], self.channel_name
        )
        await self.accept()

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.events.put(event)

    async def file_uploaded(self, event: dict[str, Any]) -> None:
        await self.events.put(event)


APPLICATION = URLRouter(
    [*websocket_urlpatterns, path("ws/record/<str:group>/", Recorder.as_asgi())]
)


def _program(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: tests/languages.sh builds it")
    return path


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Path]:
    """The layer's database file, which the other languages' programs open too."""
    db = tmp_path / "channels.sqlite3"
    layers = {
        "default": {"BACKEND": "chanlite.layer.SQLiteChannelLayer", "CONFIG": {"path": str(db)}}
    }
    Recorder.events = asyncio.Queue()
    with override_settings(CHANNEL_LAYERS=layers):
        yield db
        layer = get_channel_layer()
        assert layer is not None
        await layer.close()  # type: ignore[attr-defined]
        channel_layers.backends.clear()


async def _connected(url: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(APPLICATION, url)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def _run(*command: str | Path, env: dict[str, str] | None = None) -> str:
    """Runs a program to its end; its stdout, or a failure with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *map(str, command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


def test_node_sends_and_a_waiting_go_process_receives_in_order(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    texts = [json.dumps({"type": "job.start", "n": n}) for n in range(50)]
    go = subprocess.Popen(
        [_program(GO_EXAMPLE), "receive", db, "jobs", str(len(texts))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert go.stderr is not None
        # Go found the channel empty and is about to wait (or waits).
        assert go.stderr.readline().strip() == "waiting in jobs"
        node = subprocess.run(
            ["node", _program(NODE_EXAMPLE), "send", db, "jobs", *texts[:25]],
            env=NODE_ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert node.returncode == 0, node.stderr
        node = subprocess.run(
            ["node", NODE_EXAMPLE, "send", db, "jobs", *texts[25:]],
            env=NODE_ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert node.returncode == 0, node.stderr
        out, err = go.communicate(timeout=TIMEOUT)
    finally:
        if go.poll() is None:
            go.kill()
            go.wait()
    assert go.returncode == 0, err
    assert out.splitlines() == texts


async def test_rust_group_send_reaches_django_consumers_as_a_dict(database: Path) -> None:
    chat = await _connected("/ws/chat/lobby/")
    recorder = await _connected("/ws/record/chat_lobby/")
    try:
        assert "pid" in await chat.receive_json_from(timeout=TIMEOUT)
        out = await _run(_program(RUST_EXAMPLE), "chat", database, "lobby", "hello from Rust")
        assert out.strip() == "delivered to 2"
        event = await asyncio.wait_for(Recorder.events.get(), TIMEOUT)
        assert event == {"type": "chat.message", "message": "hello from Rust"}
        assert await chat.receive_json_from(timeout=TIMEOUT) == {"message": "hello from Rust"}
    finally:
        await chat.disconnect()
        await recorder.disconnect()


async def test_node_msgpack_bytes_arrive_as_bytes(database: Path, tmp_path: Path) -> None:
    payload = bytes(range(256)) + "é".encode()
    upload = tmp_path / "photo.bin"
    upload.write_bytes(payload)
    recorder = await _connected("/ws/record/uploads/")
    try:
        out = await _run(
            "node", _program(NODE_EXAMPLE), "upload", database, "uploads", upload, env=NODE_ENV
        )
        assert out.strip() == "delivered to 1"
        event = await asyncio.wait_for(Recorder.events.get(), TIMEOUT)
        assert event == {"type": "file.uploaded", "name": "photo.bin", "data": payload}
        assert isinstance(event["data"], bytes)
    finally:
        await recorder.disconnect()
