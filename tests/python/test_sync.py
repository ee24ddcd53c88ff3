"""Synchronous callers: async_to_sync(layer.group_send) and chanlite.sync
from many threads at once (as WSGI views, signals and Celery tasks call the
layer), the sync API's errors, its bounded connection pool, and its use in a
process forked after the parent used it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from django.core.exceptions import ImproperlyConfigured

import chanlite
import chanlite.django
import chanlite.sync
from chanlite.layer import DatabaseLocked, SQLiteChannelLayer

THREADS = 8
PER_THREAD = 40
MEMBERS = 3


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    """target(0..n-1), each on a thread of its own, all let go at once;
    re-raises the first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a sending thread hung"
    if errors:
        raise errors[0]


async def _fan_in(
    receiver: SQLiteChannelLayer, send_all: Callable[[str], None], expected: set[tuple[int, int]]
) -> None:
    """MEMBERS consumers (tasks of this event loop) join a group and receive
    while send_all(group) runs on other threads; each must get every message
    of `expected` exactly once."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    members = [await receiver.new_channel() for _ in range(MEMBERS)]
    for member in members:
        await receiver.group_add(group, member)

    async def consume(channel: str) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        while len(got) < len(expected):
            message = await receiver.receive(channel)
            got.append((message["thread"], message["i"]))
        return got

    consumers = [asyncio.create_task(consume(m)) for m in members]
    await asyncio.to_thread(send_all, group)
    done, pending = await asyncio.wait(consumers, timeout=60)
    for task in pending:
        task.cancel()
    assert not pending, "a member did not get every message within 60 s"
    for task in done:
        got = task.result()
        assert len(got) == len(expected)
        assert set(got) == expected  # with the count: none lost, none twice
        for thread in range(THREADS):  # and each thread's in the order it sent them
            mine = [i for t, i in got if t == thread]
            assert mine == sorted(mine)
    # Nothing more arrives afterwards (a duplicate would).
    extra = asyncio.create_task(receiver.receive(members[0]))
    await asyncio.sleep(0.2)
    assert not extra.done(), f"an extra message arrived: {extra.result()}"
    extra.cancel()


EXPECTED = {(t, i) for t in range(THREADS) for i in range(PER_THREAD)}


@pytest.fixture
async def big(db_path: str) -> Any:
    """A layer whose members can hold everything the threads send. The
    members are one process's `prefix!` channels, whose capacity is shared
    by the whole prefix: it must hold every member's copy at once, or a
    lagging receiver makes group_send skip members as full."""
    instance = SQLiteChannelLayer(path=db_path, capacity=THREADS * PER_THREAD * MEMBERS)
    yield instance
    await instance.flush()
    await instance.close()


async def test_async_to_sync_group_send_from_8_threads(big: SQLiteChannelLayer) -> None:
    def send_all(group: str) -> None:
        def sender(thread: int) -> None:
            group_send = async_to_sync(big.group_send)
            for i in range(PER_THREAD):
                group_send(group, {"type": "m", "thread": thread, "i": i})

        _run_threads(THREADS, sender)

    await _fan_in(big, send_all, EXPECTED)


@pytest.mark.parametrize("sender_layer", ["same", "other"])
async def test_sync_group_send_from_8_threads(
    big: SQLiteChannelLayer, db_path: str, sender_layer: str
) -> None:
    """From the receiving layer itself (woken in-process), and from another
    layer on the file (woken by the bell, as another process would be)."""
    sending = big if sender_layer == "same" else SQLiteChannelLayer(path=db_path, capacity=1000)

    def send_all(group: str) -> None:
        def sender(thread: int) -> None:
            for i in range(PER_THREAD):
                n = chanlite.sync.group_send(
                    group, {"type": "m", "thread": thread, "i": i}, layer=sending
                )
                assert n == MEMBERS

        _run_threads(THREADS, sender)

    await _fan_in(big, send_all, EXPECTED)
    stats = chanlite.sync.pool_stats(sending)
    assert stats.in_use == 0
    assert stats.opened <= THREADS  # one a thread at most, reused within it


async def test_sync_send_from_8_threads_to_one_channel(big: SQLiteChannelLayer) -> None:
    def sender(thread: int) -> None:
        for i in range(PER_THREAD):
            chanlite.sync.send("work", {"type": "m", "thread": thread, "i": i}, layer=big)

    received, _ = await asyncio.wait_for(
        asyncio.gather(
            asyncio.gather(*(big.receive("work") for _ in range(len(EXPECTED)))),
            asyncio.to_thread(_run_threads, THREADS, sender),
        ),
        timeout=60,
    )
    got = [(m["thread"], m["i"]) for m in received]
    assert len(got) == len(EXPECTED) and set(got) == EXPECTED


# ---- semantics and errors, as the async methods' ----


async def test_send_full_channel_raises_channel_full(layer: SQLiteChannelLayer) -> None:
    for i in range(3):  # the fixture's capacity
        chanlite.sync.send("full", {"type": "m", "i": i}, layer=layer)
    with pytest.raises(ChannelFull):
        chanlite.sync.send("full", {"type": "m", "i": 3}, layer=layer)
    assert [(await layer.receive("full"))["i"] for _ in range(3)] == [0, 1, 2]
    chanlite.sync.send("full", {"type": "m", "i": 4}, layer=layer)  # room again
    assert (await layer.receive("full"))["i"] == 4


async def test_group_send_skips_full_members(layer: SQLiteChannelLayer) -> None:
    chanlite.sync.group_add("gf", "roomy", layer=layer)
    chanlite.sync.group_add("gf", "crowded", layer=layer)
    for i in range(3):
        chanlite.sync.send("crowded", {"type": "m", "i": i}, layer=layer)
    assert chanlite.sync.group_send("gf", {"type": "m", "i": 9}, layer=layer) == 1
    assert (await layer.receive("roomy"))["i"] == 9
    chanlite.sync.group_discard("gf", "roomy", layer=layer)
    chanlite.sync.group_discard("gf", "never-a-member", layer=layer)  # a no-op
    assert chanlite.sync.group_send("gf", {"type": "m"}, layer=layer) == 0


def test_bad_names_and_messages_raise_as_the_async_methods(layer: SQLiteChannelLayer) -> None:
    with pytest.raises(TypeError):
        chanlite.sync.send("bad name", {"type": "m"}, layer=layer)
    with pytest.raises(TypeError):
        chanlite.sync.group_send("bad!group", {"type": "m"}, layer=layer)
    with pytest.raises(TypeError):
        chanlite.sync.group_add("g", "bad name", layer=layer)
    with pytest.raises(TypeError, match="message must be a dict"):
        chanlite.sync.send("c", ["not", "a", "dict"], layer=layer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="chanlite: layer must be"):
        chanlite.sync.send("c", {"type": "m"}, layer=42)  # type: ignore[arg-type]


async def test_alias_resolves_through_channel_layers(
    sql_default: sqlite3.Connection,
) -> None:
    """layer="default": conftest's CHANNEL_LAYERS, on Django's database file."""
    channel = f"alias-{uuid.uuid4().hex[:8]}"
    msg_id = chanlite.sync.send(channel, {"type": "m", "x": 1})
    assert msg_id > 0
    from channels.layers import get_channel_layer

    assert await get_channel_layer().receive(channel) == {"type": "m", "x": 1}
    with pytest.raises(ImproperlyConfigured, match="no channel layer 'nope'"):
        chanlite.sync.send(channel, {"type": "m"}, layer="nope")


def test_refused_inside_atomic_on_the_layers_own_database(
    sql_default: sqlite3.Connection,
) -> None:
    """Inside transaction.atomic() on Django's database, which the default
    layer shares, a call on the layer's own connection would wait for the
    transaction's own write lock: it says so at once instead."""
    from django.db import transaction

    started = time.monotonic()
    with transaction.atomic():
        with pytest.raises(RuntimeError, match=r"chanlite: chanlite.sync.send inside transaction"):
            chanlite.sync.send("in-atomic", {"type": "m"})
        chanlite.django.send("in-atomic", {"type": "m", "via": "django"})
    assert time.monotonic() - started < 5  # no wait for a lock
    depth = sql_default.execute(
        "SELECT depth FROM chanlite_channels WHERE channel = 'in-atomic'"
    ).fetchone()
    assert depth == (1,)
    assert sql_default.execute("SELECT channel_recv('in-atomic') IS NOT NULL").fetchone() == (1,)


@pytest.fixture
def sql_default() -> Any:
    from django.conf import settings

    conn = chanlite.connect(settings.DATABASES["default"]["NAME"], isolation_level=None)
    yield conn
    conn.close()


def test_database_locked_after_lock_timeout_and_nothing_stored(
    db_path: str,
    caplog: pytest.LogCaptureFixture,
    depth: Callable[[sqlite3.Connection, str], int],
) -> None:
    layer = SQLiteChannelLayer(path=db_path, busy_timeout=0.1, lock_timeout=0.5)
    chanlite.sync.send("warm", {"type": "m"}, layer=layer)  # tables and settings exist
    holder = chanlite.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    caplog.set_level(logging.WARNING, logger="chanlite")
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseLocked, match="chanlite: database is locked: send to 'held'"):
            chanlite.sync.send("held", {"type": "m"}, layer=layer)
        elapsed = time.monotonic() - started
        retries = [r for r in caplog.records if "retry" in r.getMessage()]
        assert retries, "no retry was logged"
        assert elapsed >= 0.3  # it retried rather than failing at the first lock
    finally:
        holder.execute("COMMIT")
    assert depth(holder, "held") == 0
    chanlite.sync.send("held", {"type": "m"}, layer=layer)  # the lock gone, it works
    assert depth(holder, "held") == 1
    holder.close()


async def test_works_again_after_layer_close(layer: SQLiteChannelLayer) -> None:
    chanlite.sync.send("c1", {"type": "m", "n": 1}, layer=layer)
    await layer.close()  # the pool drops the connections it had before
    before = chanlite.sync.pool_stats(layer)
    chanlite.sync.send("c1", {"type": "m", "n": 2}, layer=layer)
    after = chanlite.sync.pool_stats(layer)
    assert after.opened == before.opened + 1 and after.closed >= before.closed + 1
    assert [(await layer.receive("c1"))["n"] for _ in range(2)] == [1, 2]


async def test_test_mode_in_memory() -> None:
    layer = SQLiteChannelLayer(path=f"file:sync-{uuid.uuid4().hex}?mode=memory&cache=shared")
    chanlite.sync.group_add("gm", "mem", layer=layer)
    assert chanlite.sync.group_send("gm", {"type": "m", "v": 5}, layer=layer) == 1
    assert await layer.receive("mem") == {"type": "m", "v": 5}
    await layer.close()


# ---- the pool ----


def _fds_on(path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # one closed meanwhile
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                count += 1
    return count


def test_pool_stays_bounded_after_200_short_lived_threads(db_path: str) -> None:
    """WSGI servers make a thread per request: connections must not follow them."""
    layer = SQLiteChannelLayer(path=db_path, capacity=1000)
    resolved = os.path.realpath(db_path)
    wave = 25
    for _ in range(200 // wave):  # each wave's threads all call at once
        _run_threads(wave, lambda i: chanlite.sync.send("many", {"type": "m", "i": i}, layer=layer))
        # SQLite defers closing a file descriptor while another connection
        # of the process holds a lock on the file, and reuses it for a later
        # open: a few more than the connections open at once, but never one
        # per thread that ever called.
        assert _fds_on(resolved) <= 2 * wave
    stats = chanlite.sync.pool_stats(layer)
    assert stats.in_use == 0
    assert stats.idle <= chanlite.sync.MAX_IDLE
    assert stats.opened - stats.closed == stats.idle  # every other one was closed
    chanlite.sync.close(layer)
    assert _fds_on(resolved) == 0  # nothing left behind
    conn = chanlite.connect(db_path, isolation_level=None)
    depth = conn.execute("SELECT depth FROM chanlite_channels WHERE channel='many'").fetchone()
    assert depth == (200,)
    conn.close()


# ---- fork ----


def _child_work(layer: SQLiteChannelLayer, tag: str) -> int:
    """What a forked child does; its exit status: 0 if all went well."""
    stats = chanlite.sync.pool_stats(layer)
    if stats.opened != 0 or stats.idle != 0:
        return 3  # the parent's pool came along
    if chanlite.sync._inherited:
        return 4  # a connection crossed the fork: the parent should have closed it first
    for i in range(5):
        chanlite.sync.send("forked", {"type": "m", "who": tag, "i": i}, layer=layer)
    if chanlite.sync.group_send("fg", {"type": "m", "who": tag, "i": 99}, layer=layer) != 1:
        return 5

    # From threads too: the child's pool and its locks are its own.
    def more(thread: int) -> None:
        chanlite.sync.send("forked", {"type": "m", "who": tag, "i": 10 + thread}, layer=layer)

    _run_threads(4, more)
    return 0


def _mp_child(layer: SQLiteChannelLayer) -> None:
    os._exit(_child_work(layer, "mp"))


async def _check_received(layer: SQLiteChannelLayer, tag: str) -> None:
    got = [await asyncio.wait_for(layer.receive("forked"), 10) for _ in range(9)]
    assert {(m["who"], m["i"]) for m in got} == {(tag, i) for i in (0, 1, 2, 3, 4, 10, 11, 12, 13)}
    assert (await asyncio.wait_for(layer.receive("fmember"), 10)) == {
        "type": "m",
        "who": tag,
        "i": 99,
    }


def _parent_uses(layer: SQLiteChannelLayer) -> None:
    """Use the sync API from several threads, so the pool holds connections."""
    chanlite.sync.group_add("fg", "fmember", layer=layer)
    _run_threads(4, lambda i: chanlite.sync.send("parent", {"type": "m", "i": i}, layer=layer))
    assert chanlite.sync.pool_stats(layer).idle >= 1


async def _parent_still_works(layer: SQLiteChannelLayer) -> None:
    before = chanlite.sync.pool_stats(layer)
    assert before.idle == 0  # closed before the fork, so that none crossed it
    chanlite.sync.send("parent", {"type": "m", "i": 4}, layer=layer)
    assert chanlite.sync.pool_stats(layer).opened == before.opened + 1  # opened afresh
    got = sorted([(await layer.receive("parent"))["i"] for _ in range(5)])
    assert got == [0, 1, 2, 3, 4]


async def test_os_fork_child_uses_sync_api(big: SQLiteChannelLayer) -> None:
    _parent_uses(big)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = _child_work(big, "os")
        finally:
            os._exit(status)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    await _check_received(big, "os")
    await _parent_still_works(big)


async def test_multiprocessing_fork_child_uses_sync_api(big: SQLiteChannelLayer) -> None:
    _parent_uses(big)
    child = multiprocessing.get_context("fork").Process(target=_mp_child, args=(big,))
    child.start()
    await asyncio.to_thread(child.join, 60)
    assert child.exitcode == 0
    await _check_received(big, "mp")
    await _parent_still_works(big)


def test_no_connection_crosses_fork(tmp_path: Path) -> None:
    """Just before a fork the pool's connections are closed (SQLite forbids
    a connection to cross it): the child has none of the parent's, and the
    parent opens a new one on its next call."""
    layer = SQLiteChannelLayer(path=str(tmp_path / "x.sqlite3"))
    chanlite.sync.send("c", {"type": "m"}, layer=layer)
    pool_conn = chanlite.sync._pools[layer].idle[0].conn
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            chanlite.sync.send("c", {"type": "m"}, layer=layer)
            status = 2 if chanlite.sync._inherited else 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(sqlite3.ProgrammingError):
        pool_conn.execute("SELECT 1")  # closed before the fork
    chanlite.sync.send("c", {"type": "m"}, layer=layer)
    assert chanlite.sync.pool_stats(layer).idle == 1
    check = chanlite.connect(str(tmp_path / "x.sqlite3"))
    assert check.execute("SELECT depth FROM chanlite_channels").fetchone() == (3,)
    check.close()


async def test_pool_finalizer_runs_while_the_state_lock_is_held(db_path: str) -> None:
    """A layer's pool is closed by a finalizer when the garbage collector
    takes the layer, which can happen inside chanlite.sync while this thread
    holds its state lock (a collection runs wherever the thread allocates):
    closing must not wait for that lock (it deadlocked the flake hunt)."""
    layer = SQLiteChannelLayer(path=db_path)
    await asyncio.to_thread(lambda: chanlite.sync.send("fin", {"type": "m"}, layer=layer))
    pool = chanlite.sync._pools[layer]
    assert pool.idle, "the send left a connection idle in the pool"
    done = threading.Event()

    def finalize_under_the_lock() -> None:
        with chanlite.sync._state_lock:
            pool.close_idle()  # what the finalizer runs
        done.set()

    threading.Thread(target=finalize_under_the_lock, daemon=True).start()
    assert await asyncio.to_thread(done.wait, 10), "close_idle() deadlocked on the state lock"
    assert not pool.idle
    await layer.close()
