"""The chat demo (examples/django_chat) end to end: two daphne processes
sharing one chanlite file; a message sent over a WebSocket to one server
reaches a client of the other. (A raw WebSocket client, to need nothing
beyond daphne; the browser test of issue 3 is separate.)"""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

pytest.importorskip("daphne")


class _WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str) -> _WebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_json(self, value: object) -> None:
        payload = json.dumps(value).encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        else:
            header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def receive_json(self) -> object:
        first, second = await self.reader.readexactly(2)
        assert first & 0x0F == 1, f"not a text frame: {first:#x}"
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return json.loads(await self.reader.readexactly(n))

    def close(self) -> None:
        self.writer.close()


async def test_chat_across_two_server_processes(demo_servers: list[int]) -> None:
    first, second = demo_servers
    alice = await _WebSocket.connect(first, "/ws/chat/lobby/")
    bob = await _WebSocket.connect(second, "/ws/chat/lobby/")
    # Each consumer first says which server process holds its WebSocket.
    pid_a, pid_b = [await asyncio.wait_for(ws.receive_json(), 10) for ws in (alice, bob)]
    assert isinstance(pid_a, dict) and isinstance(pid_b, dict)
    assert pid_a["pid"] != pid_b["pid"]
    # The consumer joins its group before it accepts: both are members now.
    await alice.send_json({"message": "hello from 1"})
    assert await asyncio.wait_for(bob.receive_json(), 10) == {"message": "hello from 1"}
    assert await asyncio.wait_for(alice.receive_json(), 10) == {"message": "hello from 1"}
    await bob.send_json({"message": "hello from 2"})
    assert await asyncio.wait_for(alice.receive_json(), 10) == {"message": "hello from 2"}
    assert await asyncio.wait_for(bob.receive_json(), 10) == {"message": "hello from 2"}
    alice.close()
    bob.close()
