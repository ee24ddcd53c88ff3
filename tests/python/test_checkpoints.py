"""Checkpoints: channel_recv_batch's second connection checkpoints as its
caller's connection would (wal_autocheckpoint), and the layer's WAL stays
bounded with its calls on the event loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
import threading
from collections.abc import Iterator

import pytest

import chanlite
from chanlite import local
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


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chanlite-checkpoint"]


async def test_checkpoints_run_on_the_checkpointer_not_on_requests(db_path: str) -> None:
    """The layer's own connections never checkpoint (wal_autocheckpoint=0):
    the checkpointer thread does, and the WAL still starts over."""
    layer = SQLiteChannelLayer(path=db_path, capacity=100_000)
    try:
        for i in range(1500):  # several thousand WAL frames
            await layer.send("ck", {"type": "m", "i": i})
            assert (await layer.receive("ck"))["i"] == i
        transport = layer.transport
        assert transport._loop_conns, "no call ran on the loop"
        for loop_conn in transport._loop_conns.values():
            assert loop_conn.conn is not None
            assert loop_conn.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        checkpointer = transport._checkpointer
        assert checkpointer is not None and checkpointer.passive > 0, "nothing checkpointed"
        assert (await asyncio.to_thread(os.path.getsize, db_path + "-wal")) < 8 << 20
    finally:
        await layer.close()


async def test_close_stops_the_checkpointer(db_path: str) -> None:
    before = len(_checkpoint_threads())
    layer = SQLiteChannelLayer(path=db_path)
    await layer.send("a", {"type": "m"})
    assert len(_checkpoint_threads()) == before + 1
    await layer.close()
    assert len(_checkpoint_threads()) == before, "close() left the checkpointer running"
    await layer.send("a", {"type": "m"})  # used again: a new one
    assert len(_checkpoint_threads()) == before + 1
    await layer.flush()
    await layer.close()
    assert len(_checkpoint_threads()) == before


async def test_a_stuck_wal_makes_requests_checkpoint_again(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that never ends keeps every RESTART from finishing: past
    FALLBACK_FRAMES the request connections checkpoint again (the bound as
    it was before the checkpointer), and stop once the WAL starts over."""
    monkeypatch.setattr(local, "CHECKPOINT_FRAMES", 100)
    monkeypatch.setattr(local, "RESTART_FRAMES", 200)
    monkeypatch.setattr(local, "FALLBACK_FRAMES", 400)
    layer = SQLiteChannelLayer(path=db_path, capacity=100_000)
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        await layer.send("st", {"type": "m"})
        await layer.receive("st")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM chanlite_message").fetchone()
        transport = layer.transport
        for i in range(400):
            await layer.send("st", {"type": "m", "i": i})
            assert (await layer.receive("st"))["i"] == i
            if transport._request_autocheckpoint:
                break
        assert transport._request_autocheckpoint > 0, "the stuck WAL went unnoticed"
        reader.execute("COMMIT")
        for i in range(400):
            await layer.send("st", {"type": "m", "i": i})
            assert (await layer.receive("st"))["i"] == i
            if not transport._request_autocheckpoint:
                break
        assert transport._request_autocheckpoint == 0, "requests kept checkpointing"
    finally:
        reader.close()
        await layer.close()
