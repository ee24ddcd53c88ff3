"""A lock storm: another connection holds the write lock (BEGIN IMMEDIATE)
longer than the layer's busy timeout. Sends and receives retry with a
jittered backoff and say so in the ``chanlite`` logger; after the release the
message arrives exactly once. A send that cannot get the lock within
lock_timeout raises DatabaseLocked, having stored nothing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import chanlite
from chanlite.layer import DatabaseLocked, SQLiteChannelLayer

BUSY = 0.1  # the layer's busy timeout; the lock is held for many of these
HOLD = 1.0


@pytest.fixture
def holder(db_path: str) -> Iterator[sqlite3.Connection]:
    """Another connection to the layer's database, in WAL mode, that can
    hold the write lock."""
    conn = chanlite.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("SELECT channel_flush()")  # creates the tables
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def _locked_retries(caplog: pytest.LogCaptureFixture, what: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "chanlite"
        and r.levelno == logging.WARNING
        and what in r.getMessage()
        and "database locked past the busy timeout" in r.getMessage()
    ]


async def _warm_layer(
    db_path: str, caplog: pytest.LogCaptureFixture, **config: float
) -> SQLiteChannelLayer:
    """A layer with a short busy timeout, its connection already open and
    configured (so that the storm meets the call itself), logging captured."""
    caplog.set_level(logging.INFO, logger="chanlite")
    layer = SQLiteChannelLayer(path=db_path, busy_timeout=BUSY, **config)  # type: ignore[arg-type]
    await layer.send("warm", {"type": "warm-up"})
    assert await layer.receive("warm") == {"type": "warm-up"}
    for _ in range(5000):  # the loop's own connection opens in the pool
        opened = layer.transport._loop_conns.get(threading.get_ident())
        if opened is not None and opened.conn is not None:
            break
        await asyncio.sleep(0.001)
    return layer


async def test_send_retries_until_the_lock_is_released(
    db_path: str,
    holder: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
    depth: Callable[[sqlite3.Connection, str], int],
) -> None:
    layer = await _warm_layer(db_path, caplog, lock_timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    send = asyncio.create_task(layer.send("storm", {"type": "m", "n": 1}))
    await asyncio.sleep(HOLD)
    assert not send.done(), "the send did not wait for the lock"
    # The send tried on the loop's thread first, found the lock taken at
    # once (busy timeout 0 there) and went to the pool, which waits: the
    # event loop itself never waited for the lock.
    assert layer.loop_fallbacks >= 1
    loop_conn = layer.transport._loop_conns[threading.get_ident()].conn
    assert loop_conn is not None
    assert loop_conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    retries = _locked_retries(caplog, "send to 'storm'")
    assert len(retries) >= 2, [r.getMessage() for r in caplog.records]
    holder.execute("COMMIT")
    await asyncio.wait_for(send, 10)
    assert any("succeeded after" in r.getMessage() for r in caplog.records)
    assert depth(holder, "storm") == 1  # stored once, not once per attempt
    assert await asyncio.wait_for(layer.receive("storm"), 5) == {"type": "m", "n": 1}
    assert depth(holder, "storm") == 0
    await layer.close()


async def test_receive_retries_and_gets_the_message_once(
    db_path: str,
    holder: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
    depth: Callable[[sqlite3.Connection, str], int],
) -> None:
    layer = await _warm_layer(db_path, caplog)
    # Queued before the storm, then locked: the receiver's pop cannot run.
    holder.execute("SELECT channel_send('queued', ?)", (layer.serialize({"type": "q"}),))
    holder.execute("BEGIN IMMEDIATE")
    receive = asyncio.create_task(layer.receive("queued"))
    await asyncio.sleep(HOLD)
    assert not receive.done()
    assert len(_locked_retries(caplog, "receive from 'queued'")) >= 2
    holder.execute("COMMIT")
    assert await asyncio.wait_for(receive, 10) == {"type": "q"}
    assert depth(holder, "queued") == 0
    second = asyncio.create_task(layer.receive("queued"))
    await asyncio.sleep(0.3)
    assert not second.done(), "the message was delivered twice"
    second.cancel()
    await layer.close()


async def test_send_and_receive_across_a_storm_from_another_thread(
    db_path: str, holder: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Sends and a receiver already waiting when the storm starts, released
    by another thread: each message arrives exactly once, in order."""
    layer = await _warm_layer(db_path, caplog, capacity=100)
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(HOLD, holder.execute, ("COMMIT",))
    releaser.start()
    try:
        waiting = asyncio.create_task(layer.receive("many"))
        for i in range(20):
            await layer.send("many", {"type": "m", "i": i})
        got = [(await asyncio.wait_for(waiting, 10))["i"]]
        for _ in range(19):
            got.append((await asyncio.wait_for(layer.receive("many"), 10))["i"])
        assert got == list(range(20))
        assert _locked_retries(caplog, "send to 'many'")
        extra = asyncio.create_task(layer.receive("many"))
        await asyncio.sleep(0.3)
        assert not extra.done(), "a message was delivered twice"
        extra.cancel()
    finally:
        releaser.join()
    await layer.close()


async def test_send_gives_up_after_lock_timeout_and_stores_nothing(
    db_path: str,
    holder: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
    depth: Callable[[sqlite3.Connection, str], int],
) -> None:
    layer = await _warm_layer(db_path, caplog, lock_timeout=0.6)
    holder.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DatabaseLocked, match="chanlite: database is locked: send to 'gave-up'"):
        await layer.send("gave-up", {"type": "m"})
    assert loop.time() - started < 0.6 + BUSY + 1.0  # bounded: never blocks forever
    assert any(r.levelno == logging.ERROR for r in caplog.records if r.name == "chanlite")
    holder.execute("COMMIT")
    assert depth(holder, "gave-up") == 0
    await layer.close()


def test_lock_timeout_is_checked(db_path: str) -> None:
    with pytest.raises(ValueError, match="lock_timeout"):
        SQLiteChannelLayer(path=db_path, lock_timeout=-1)


async def test_calls_run_on_the_loop_thread_when_nothing_holds_the_lock(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Once a loop's connection is open, sends and pops make no pool hop."""
    layer = await _warm_layer(db_path, caplog)
    pool_calls = 0
    original_submit = layer.transport._submit

    def counting_submit(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal pool_calls
        pool_calls += 1
        return original_submit(fn, *args)

    layer.transport._submit = counting_submit  # type: ignore[method-assign]
    for i in range(20):
        await layer.send("direct", {"type": "m", "i": i})
    assert [(await layer.receive("direct"))["i"] for _ in range(20)] == list(range(20))
    assert pool_calls == 0 and layer.loop_fallbacks == 0
    await layer.close()

    pooled = SQLiteChannelLayer(path=db_path, loop_calls=False)
    await pooled.send("pooled", {"type": "m"})
    assert await pooled.receive("pooled") == {"type": "m"}
    assert pooled.transport._loop_conns == {}
    await pooled.close()
