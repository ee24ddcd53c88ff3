"""chanlite_busy_timeout(ms): a busy handler that polls the write lock every
0.1 to 2 ms (SQLite's own sleeps up to 100 ms between tries), set on the
layer's pool connections. It must wait as PRAGMA busy_timeout does: until
the lock is free, or fail once the timeout has passed."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import pytest

import chanlite
from chanlite.layer import SQLiteChannelLayer


def _connect(db_path: str) -> sqlite3.Connection:
    conn = chanlite.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


@pytest.fixture
def holder(db_path: str) -> Iterator[sqlite3.Connection]:
    """A connection holding the write lock, with one message queued."""
    conn = _connect(db_path)
    conn.execute("SELECT channel_send('q', 'queued')")
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    if conn.in_transaction:
        conn.execute("COMMIT")
    conn.close()


def _release_soon(holder: sqlite3.Connection) -> threading.Timer:
    """Commit the holder's transaction from another thread while the caller
    waits for the lock (the timeout is far longer, so only waiting passes)."""
    timer = threading.Timer(0.2, holder.execute, ("COMMIT",))
    timer.start()
    return timer


def test_it_waits_until_the_lock_is_released(db_path: str, holder: sqlite3.Connection) -> None:
    waiter = _connect(db_path)
    assert waiter.execute("SELECT chanlite_busy_timeout(20000)").fetchone() == (20000,)
    timer = _release_soon(holder)
    assert waiter.execute("SELECT channel_recv('q')").fetchone() == ("queued",)
    timer.join()
    waiter.close()


def test_it_gives_up_after_the_timeout(db_path: str, holder: sqlite3.Connection) -> None:
    waiter = _connect(db_path)
    waiter.execute("SELECT chanlite_busy_timeout(50)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        waiter.execute("SELECT channel_recv('q')")
    waiter.execute("SELECT chanlite_busy_timeout(0)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        waiter.execute("SELECT channel_recv('q')")
    holder.execute("COMMIT")
    assert waiter.execute("SELECT channel_recv('q')").fetchone() == ("queued",)
    waiter.close()


def test_channel_recv_batch_waits_as_its_caller_does(
    db_path: str, holder: sqlite3.Connection
) -> None:
    """channel_recv_batch writes on a second connection of its own, which
    takes the caller's busy timeout: PRAGMA busy_timeout reads 0 under
    chanlite_busy_timeout, so the second connection must be told."""
    waiter = _connect(db_path)
    waiter.execute("SELECT chanlite_busy_timeout(20000)")
    assert waiter.execute("PRAGMA busy_timeout").fetchone() == (0,)
    timer = _release_soon(holder)
    rows = waiter.execute("SELECT channel, message FROM channel_recv_batch('q', 10)").fetchall()
    assert rows == [("q", "queued")]
    timer.join()
    waiter.close()


def test_the_layers_pool_connections_use_it(db_path: str, holder: sqlite3.Connection) -> None:
    layer = SQLiteChannelLayer(path=db_path)
    conn = layer.transport.open_connection()
    try:
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (0,)  # SQLite's handler replaced
        timer = _release_soon(holder)
        conn.execute("BEGIN IMMEDIATE")  # waits up to the layer's busy_timeout, 5 s
        conn.execute("COMMIT")
        timer.join()
    finally:
        conn.close()
