"""Checkpoints: channel_recv_batch's second connection checkpoints as its
caller's connection would (wal_autocheckpoint), and the layer's WAL stays
bounded with its calls on the event loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
from collections.abc import Iterator

import pytest

import chanlite
from chanlite.layer import SQLiteChannelLayer


def _backfilled(db_path: str) -> int:
    """Frames checkpointed into the database since the WAL began: nBackfill,
    the first field after the two 48-byte headers of the WAL-index
    (https://sqlite.org/walformat.html), in native byte order."""
    with open(db_path + "-shm", "rb") as shm:
        shm.seek(96)
        return int(struct.unpack("=I", shm.read(4))[0])


@pytest.fixture
def sender(db_path: str) -> Iterator[sqlite3.Connection]:
    conn = chanlite.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("SELECT chanlite_config('capacity', 100000)")
    yield conn
    conn.close()


@pytest.mark.parametrize("pages", [0, 100])
def test_batch_connection_checkpoints_as_its_caller(
    db_path: str, sender: sqlite3.Connection, pages: int
) -> None:
    for i in range(600):  # well over 100 pages of WAL
        sender.execute("SELECT channel_send('ckpt', ?)", (f"m{i}",))
    assert _backfilled(db_path) == 0
    receiver = chanlite.connect(db_path, isolation_level=None)
    receiver.execute(f"PRAGMA wal_autocheckpoint={pages}")
    rows = receiver.execute("SELECT message FROM channel_recv_batch('ckpt', 10)").fetchall()
    assert [r[0] for r in rows] == [f"m{i}" for i in range(10)]
    if pages == 0:
        assert _backfilled(db_path) == 0, "the batch's commit checkpointed"
    else:
        assert _backfilled(db_path) > 0, "the batch's commit did not checkpoint"
    receiver.close()


async def test_wal_stays_bounded_with_calls_on_the_loop(db_path: str) -> None:
    """Sends and pops on the loop's connection (and the batch's second
    connection) checkpoint as SQLite does by default, so the WAL starts over
    instead of holding every write."""
    layer = SQLiteChannelLayer(path=db_path, capacity=100_000)
    await layer.send("warm", {"type": "warm"})
    await layer.receive("warm")
    for i in range(2000):
        await layer.send("wal", {"type": "m", "i": i})
        assert (await layer.receive("wal"))["i"] == i
    assert layer.transport._loop_conns, "no call ran on the loop"
    # Unchecked, the WAL would hold every one of those writes (over 16 MB).
    assert (await asyncio.to_thread(os.path.getsize, db_path + "-wal")) < 8 << 20
    await layer.close()
