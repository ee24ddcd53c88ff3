"""fork() after the layer was used: gunicorn --preload, Celery's prefork pool,
multiprocessing, daphne's test server. The child gets a layer that works at
once, with its own connections, thread pool, bell watch and process-specific
prefix; the parent goes on; nothing either had sent or buffered is lost or
delivered to the wrong process.

Each kind of use before the fork runs with os.fork() and with
multiprocessing's fork context; both processes are checked."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chanlite.layer import SQLiteChannelLayer
from transports import new_layer, sql_connection, transport_db_path

TIMEOUT = 10.0
KEYS = ["fork-test-key"]

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork of a process with threads: the layer's
    # pool has threads by then, and handling that is what this file tests.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def in_child(method: str, body: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run body() in a forked child's own event loop; its JSON result, or the
    child's traceback as an AssertionError."""
    if method == "os.fork":
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: always leave through os._exit
            code = 1
            try:
                os.close(read_fd)
                try:
                    out = {"ok": asyncio.run(asyncio.wait_for(body(), TIMEOUT))}
                    code = 0
                except BaseException:
                    out = {"error": traceback.format_exc()}
                with os.fdopen(write_fd, "w") as w:
                    json.dump(out, w)
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as r:
            text = r.read()
        os.waitpid(pid, 0)
    else:
        ctx = multiprocessing.get_context("fork")
        results = ctx.SimpleQueue()

        def target() -> None:
            try:
                results.put(json.dumps({"ok": asyncio.run(asyncio.wait_for(body(), TIMEOUT))}))
            except BaseException:
                results.put(json.dumps({"error": traceback.format_exc()}))

        process = ctx.Process(target=target)
        process.start()
        process.join(TIMEOUT * 2)
        if process.is_alive():
            process.kill()
            raise AssertionError("the child hung")
        text = results.get() if not results.empty() else '{"error": "the child said nothing"}'
    out = json.loads(text) if text else {"error": "the child said nothing"}
    if "error" in out:
        raise AssertionError("in the child:\n" + out["error"])
    return out["ok"]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


class Before:
    """What the parent did before the fork, and what it must still find after."""

    def __init__(self, layer: SQLiteChannelLayer) -> None:
        self.layer = layer
        self.own_channel = ""
        self.buffered: list[dict[str, Any]] = []  # the parent's, still to receive
        self.pending: threading.Thread | None = None
        self.pending_result: list[dict[str, Any]] = []
        self.pending_loop: asyncio.AbstractEventLoop | None = None


async def use_send(b: Before) -> None:
    await b.layer.send("to.parent.before", {"type": "before", "n": 1})


async def use_receive_plain(b: Before) -> None:
    await b.layer.send("plain", {"type": "plain"})
    assert (await b.layer.receive("plain"))["type"] == "plain"


async def use_receive_local(b: Before) -> None:
    b.own_channel = await b.layer.new_channel()
    await b.layer.send(b.own_channel, {"type": "local", "n": 1})
    await b.layer.send(b.own_channel, {"type": "local", "n": 2})
    assert (await b.layer.receive(b.own_channel))["n"] == 1
    # The receiver popped the whole prefix! queue: n=2 is in this process's
    # buffer now, and must reach the parent, never the child.
    b.buffered.append({"type": "local", "n": 2})


async def use_groups(b: Before) -> None:
    b.own_channel = await b.layer.new_channel()
    await b.layer.group_add("room", b.own_channel)
    assert await b.layer.group_send("room", {"type": "room", "n": 1}) == 1
    assert (await b.layer.receive(b.own_channel))["n"] == 1


async def use_cancelled_receive(b: Before) -> None:
    b.own_channel = await b.layer.new_channel()
    waiting = asyncio.create_task(b.layer.receive(b.own_channel))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await b.layer.send(b.own_channel, {"type": "after-cancel"})
    b.buffered.append({"type": "after-cancel"})


def use_pending_receive(b: Before) -> None:
    """A receive() waiting in another thread's loop while the fork happens."""
    started = threading.Event()

    async def wait() -> None:
        b.pending_loop = asyncio.get_running_loop()
        b.own_channel = await b.layer.new_channel()
        started.set()
        b.pending_result.append(await asyncio.wait_for(b.layer.receive(b.own_channel), TIMEOUT))

    b.pending = threading.Thread(target=asyncio.run, args=(wait(),))
    b.pending.start()
    assert started.wait(TIMEOUT)


USES: dict[str, Callable[[Before], Any]] = {
    "send": use_send,
    "receive-plain": use_receive_plain,
    "receive-local": use_receive_local,
    "groups": use_groups,
    "cancelled-receive": use_cancelled_receive,
    "pending-receive": use_pending_receive,
    "encrypted": use_receive_local,
}


@pytest.fixture(params=["file", pytest.param("cluster", marks=pytest.mark.cluster)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database file, or a database of the test's own on the session's
    dqlite cluster (marked ``cluster``: the cluster step runs those)."""
    return transport_db_path(request, tmp_path, "chanlite-fork")


@pytest.mark.parametrize("method", ["os.fork", "multiprocessing"])
@pytest.mark.parametrize("use", list(USES))
def test_layer_used_before_fork_works_in_child_and_parent(
    request: pytest.FixtureRequest, where: str, use: str, method: str
) -> None:
    keys = KEYS if use == "encrypted" else None
    layer = new_layer(where, symmetric_encryption_keys=keys)
    b = Before(layer)
    prelude = USES[use](b)
    if asyncio.iscoroutine(prelude):
        run(prelude)
    parent_prefix = layer.client_prefix
    run(layer.send("to.child", {"type": "for-child"}))

    async def child() -> dict[str, Any]:
        # Straight to work: no setup, no close() of anything first.
        mine = await layer.new_channel()
        await layer.send(mine, {"type": "self"})
        got_self = await layer.receive(mine)
        await layer.group_add("kids", mine)
        await layer.group_send("kids", {"type": "kids"})
        got_group = await layer.receive(mine)
        got_plain = await layer.receive("to.child")
        await layer.send("to.parent", {"type": "from-child", "pid": os.getpid()})
        foreign = ""
        if b.own_channel:
            try:
                await layer.receive(b.own_channel)
            except AssertionError as e:
                foreign = str(e)
        await layer.group_discard("kids", mine)
        await layer.close()
        return {
            "prefix": layer.client_prefix,
            "self": got_self["type"],
            "group": got_group["type"],
            "plain": got_plain["type"],
            "foreign": foreign,
        }

    result = in_child(method, child)
    assert result["prefix"] != parent_prefix, "the child must have a prefix of its own"
    assert (result["self"], result["group"], result["plain"]) == ("self", "kids", "for-child")
    if b.own_channel:
        assert result["foreign"] == "Wrong client prefix", (
            "the parent's channels are not the child's"
        )

    # The parent goes on: its prefix, its buffered messages, its receivers.
    assert layer.client_prefix == parent_prefix

    async def parent_after() -> None:
        got = await layer.receive("to.parent")
        assert got["type"] == "from-child" and got["pid"] != os.getpid()
        for expected in b.buffered:
            assert await layer.receive(b.own_channel) == expected
        if use == "send":
            assert (await layer.receive("to.parent.before"))["n"] == 1
        if b.pending is None:
            mine = await layer.new_channel()
            await layer.send(mine, {"type": "parent-after"})
            assert (await layer.receive(mine))["type"] == "parent-after"
        else:
            await layer.send(b.own_channel, {"type": "for-the-pending-receive"})

    run(parent_after())
    if b.pending is not None:
        b.pending.join(TIMEOUT)
        assert b.pending_result == [{"type": "for-the-pending-receive"}]
    run(layer.close())
    conn = sql_connection(request, where)
    try:
        left = conn.execute("SELECT count(*) FROM chanlite_message").fetchone()[0]
    finally:
        conn.close()
    assert left == 0, f"{left} messages left queued: something went to the wrong process"


async def _depth(db_path: str) -> int:
    import chanlite

    def count() -> int:
        with chanlite.connect(db_path) as conn:
            return int(conn.execute("SELECT count(*) FROM chanlite_message").fetchone()[0])

    return await asyncio.to_thread(count)


@pytest.mark.parametrize("method", ["os.fork", "multiprocessing"])
def test_forked_siblings_each_get_exactly_their_own_messages(db_path: str, method: str) -> None:
    """The issue's case: two processes forked from one parent each make a
    new_channel(); 20 messages are sent to each; each receives its 20."""
    layer = SQLiteChannelLayer(path=db_path)
    mine = run(layer.new_channel())
    run(layer.send(mine, {"type": "warm-up"}))
    assert run(layer.receive(mine))["type"] == "warm-up"
    ctx = multiprocessing.get_context("fork")
    names: Any = ctx.SimpleQueue()
    results: Any = ctx.SimpleQueue()

    async def sibling() -> list[int]:
        channel = await layer.new_channel()
        names.put(channel)
        got = [(await layer.receive(channel))["n"] for _ in range(20)]
        await layer.close()
        return got

    def start(index: int) -> Any:
        if method == "multiprocessing":
            p = ctx.Process(target=lambda: results.put(json.dumps(run(sibling()))))
            p.start()
            return p
        pid = os.fork()
        if pid == 0:
            try:
                results.put(json.dumps(run(sibling())))
            finally:
                os._exit(0)
        return pid

    children = [start(i) for i in range(2)]
    channels = [names.get(), names.get()]
    assert len({c.split("!")[0] for c in channels} | {mine.split("!")[0]}) == 3
    for channel in channels:
        for n in range(20):
            run(layer.send(channel, {"type": "n", "n": n}))
    for child in children:
        if method == "multiprocessing":
            child.join(TIMEOUT * 2)
        else:
            os.waitpid(child, 0)
    got = sorted(json.loads(results.get()) for _ in children)
    assert got == [list(range(20)), list(range(20))]
    run(layer.close())
    assert run(_depth(db_path)) == 0


def _django_child(work: Callable[[], Any]) -> int:
    """Fork; the child runs work() and exits 0 if it returned truthy. The
    child's pid, for _exit_code."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if work() else 2
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_django_backend_connection_does_not_cross_fork() -> None:
    """chanlite.django.backend (the transactional outbox's connection): a
    connection opened before the fork is closed just before it, so the
    child's chanlite calls work (chanlite refuses them on a connection that
    crossed the fork) and the parent connects again on its next query.
    (Inside transaction.atomic() nothing can be closed: docs/django.md says
    not to fork there.)"""
    from django.db import connection

    import chanlite.django

    chanlite.django.send("dj.fork", {"type": "parent-before"})
    assert connection.connection is not None
    before = connection.connection

    def child_sends() -> bool:
        chanlite.django.send("dj.fork", {"type": "child"})
        return connection.connection is not before

    assert _exit_code(_django_child(child_sends)) == 0
    # Closed just before the fork: the parent opened a new one to send again.
    chanlite.django.send("dj.fork", {"type": "parent-after"})
    assert connection.connection is not before

    with connection.cursor() as cursor:
        cursor.execute("SELECT message FROM channel_recv_batch('dj.fork', 10)")
        got = [msgpack.unpackb(m)["type"] for (m,) in cursor]
    assert sorted(got) == sorted(["parent-before", "child", "parent-after"])


@pytest.mark.parametrize("method", ["os.fork", "multiprocessing"])
def test_checkpointer_does_not_cross_fork(db_path: str, method: str) -> None:
    """The checkpointer's thread and connection are stopped before a fork;
    the child starts its own on its first write, the parent again on its."""
    layer = SQLiteChannelLayer(path=db_path)
    run(layer.send("ck", {"type": "before"}))
    before = layer.transport._checkpointer
    assert before is not None and before.thread.is_alive()
    before._connection()  # as its first checkpoint would open it (its thread is idle)

    async def child() -> dict[str, Any]:
        await layer.send("ck", {"type": "child"})
        mine = layer.transport._checkpointer
        assert mine is not None
        result = {"pid": mine.pid, "me": os.getpid(), "alive": mine.thread.is_alive()}
        await layer.close()
        return result

    result = in_child(method, child)
    assert result["pid"] == result["me"] != os.getpid(), "the child uses the parent's"
    assert result["alive"]
    assert not before.thread.is_alive(), "the parent's crossed the fork running"
    assert before.conn is None, "its connection stayed open across the fork"
    run(layer.send("ck", {"type": "after"}))
    after = layer.transport._checkpointer
    assert after is not None and after is not before and after.thread.is_alive()
    assert after.pid == os.getpid()
    run(layer.flush())
    run(layer.close())
