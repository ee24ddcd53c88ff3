"""Group commit: the first send of an event loop's turn commits at once, the
other sends its coroutines make in that turn commit together in one
transaction; each send() returns only after its commit, a full channel
fails only its own send, and a send cancelled before its turn ends is not
sent."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from chanlite.layer import SQLiteChannelLayer


@pytest.fixture
async def layer(db_path: str) -> AsyncIterator[SQLiteChannelLayer]:
    layer = SQLiteChannelLayer(path=db_path, capacity=100)
    await layer.send("warm", {"type": "warm"})  # opens the loop connection
    await layer.receive("warm")

    def opened() -> bool:
        return any(c.conn is not None for c in layer.transport._loop_conns.values())

    for _ in range(500):
        if opened():
            break
        await asyncio.sleep(0.01)
    assert opened(), "the loop connection never opened"
    yield layer
    await layer.flush()
    await layer.close()


async def test_sends_of_one_turn_share_one_commit(layer: SQLiteChannelLayer) -> None:
    transport = layer.transport
    before = transport.sends_together
    await asyncio.gather(*(layer.send("gc", {"type": "m", "i": i}) for i in range(8)))
    assert transport.sends_together == before + 1, "the last 7 sends did not commit together"
    got = [(await layer.receive("gc"))["i"] for _ in range(8)]
    assert got == list(range(8)), "FIFO order is the order send() was called in"


async def test_a_lone_task_sends_at_once_and_busy_tasks_still_share(
    layer: SQLiteChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task sending one message after another, with no other task ready,
    commits each at once (waiting for the turn's end would share nothing);
    tasks that each send in a loop still share commits, rather than the
    first running all its sends before the others start."""
    transport = layer.transport
    before = transport.sends_together
    deferred: list[int] = []
    send_together = transport._send_together

    def counting(ident: int, waiting: list[Any]) -> None:
        deferred.append(len(waiting))
        send_together(ident, waiting)

    monkeypatch.setattr(transport, "_send_together", counting)
    for i in range(20):
        await layer.send("gc.lone", {"type": "m", "i": i})
    # (A callback of the loop's own, ready at the same time, may make one
    # wait; on main before this, every other send did.)
    assert sum(deferred) <= 3, f"a lone task's sends waited for the turn's end: {deferred}"

    async def sender(k: int) -> None:
        for i in range(10):
            await layer.send(f"gc.busy{k}", {"type": "m", "i": i})

    await asyncio.gather(*(sender(k) for k in range(4)))
    shared = transport.sends_together - before
    assert shared >= 5, f"4 tasks sending 10 each shared only {shared} commits"
    for i in range(20):
        assert (await layer.receive("gc.lone"))["i"] == i
    for k in range(4):
        assert [(await layer.receive(f"gc.busy{k}"))["i"] for _ in range(10)] == list(range(10))


async def test_each_send_returns_after_its_commit(layer: SQLiteChannelLayer, db_path: str) -> None:
    """When a send() returns, another connection already sees its message."""
    seen: list[int] = []

    async def send_and_look(i: int) -> None:
        await layer.send("gc.seen", {"type": "m", "i": i})
        with sqlite3.connect(db_path) as conn:
            depth = conn.execute(
                "SELECT depth FROM chanlite_queue WHERE queue = 'gc.seen'"
            ).fetchone()
        seen.append(depth[0] if depth else 0)

    await asyncio.gather(*(send_and_look(i) for i in range(5)))
    assert all(depth >= k + 1 for k, depth in enumerate(seen)), (
        f"a send returned before its commit: depths seen {seen}"
    )
    assert seen[-1] == 5


async def test_a_full_channel_fails_only_its_own_send(
    layer: SQLiteChannelLayer, db_path: str
) -> None:
    await layer.send("gc.full", {"type": "m", "i": -1})
    for i in range(98):  # capacity 100: room for exactly one more
        await layer.send("gc.full", {"type": "m", "i": i})
    before = layer.transport.sends_together
    results = await asyncio.gather(
        layer.send("gc.other", {"type": "m", "i": 0}),
        layer.send("gc.full", {"type": "m", "i": 98}),
        layer.send("gc.full", {"type": "m", "i": 99}),  # the one too many
        layer.send("gc.other", {"type": "m", "i": 1}),
        return_exceptions=True,
    )
    assert layer.transport.sends_together == before + 1
    assert results[0] is None and results[1] is None and results[3] is None, results
    assert isinstance(results[2], ChannelFull), results
    assert [(await layer.receive("gc.other"))["i"] for _ in range(2)] == [0, 1]
    got = [(await layer.receive("gc.full"))["i"] for _ in range(100)]
    assert got == list(range(-1, 99)), "the full channel lost or gained a message"


async def test_a_send_cancelled_before_its_turn_ends_is_not_sent(
    layer: SQLiteChannelLayer,
) -> None:
    tasks = [asyncio.create_task(layer.send("gc.cancel", {"type": "m", "i": i})) for i in range(3)]
    await asyncio.sleep(0)  # each task has queued its send; the turn has not ended
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], asyncio.CancelledError)
    assert (await layer.receive("gc.cancel"))["i"] == 0
    assert (await layer.receive("gc.cancel"))["i"] == 2
    await layer.send("gc.cancel", {"type": "m", "i": 3})
    assert (await layer.receive("gc.cancel"))["i"] == 3, "the cancelled send was sent"


async def test_a_locked_database_sends_each_through_the_pool(
    layer: SQLiteChannelLayer, db_path: str
) -> None:
    """The turn's transaction cannot begin while another connection writes:
    every send goes to the pool, which waits for the lock."""
    blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    fallbacks = layer.transport.loop_fallbacks
    sends = asyncio.gather(*(layer.send("gc.locked", {"type": "m", "i": i}) for i in range(4)))
    await asyncio.sleep(0.05)
    assert not sends.done(), "a send returned while the database was locked"
    blocker.execute("COMMIT")
    blocker.close()
    await sends
    assert layer.transport.loop_fallbacks > fallbacks
    got = sorted([(await layer.receive("gc.locked"))["i"] for _ in range(4)])
    assert got == [0, 1, 2, 3]


def test_a_loop_stopped_before_its_turn_ended_leaves_no_trap(db_path: str) -> None:
    """A loop stopped in the turn of a send, before its end-of-turn callback
    ran, then closed: the next event loop of the thread must send all the
    same (not wait for that callback)."""
    layer = SQLiteChannelLayer(path=db_path)

    def opened() -> bool:
        return any(c.conn is not None for c in layer.transport._loop_conns.values())

    loop = asyncio.new_event_loop()
    try:
        for _ in range(500):
            loop.run_until_complete(layer.send("gc.loops", {"type": "m", "i": -1}))
            if opened():
                break
            loop.run_until_complete(asyncio.sleep(0.01))
        assert opened(), "the loop connection never opened"
        sending = loop.create_task(layer.send("gc.loops", {"type": "m", "i": 0}))
        loop.call_soon(loop.stop)  # in the same turn as the send
        loop.run_forever()
        assert sending.done() and sending.exception() is None
    finally:
        loop.close()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(layer.send("gc.loops", {"type": "m", "i": 1}), 10))
        loop.run_until_complete(layer.flush())
        loop.run_until_complete(layer.close())
    finally:
        loop.close()
