"""Receivers wake on the extension's bell (inotify), not on a timer; buffered
messages expire at their expires_at; the polling fallback still works."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from chanlite import _inotify
from chanlite.layer import SQLiteChannelLayer
from chanlite.receiver import _Queue

LINUX = sys.platform.startswith("linux")
needs_inotify = pytest.mark.skipif(not LINUX, reason="inotify is Linux only")

# Another OS process that sends one message per line of stdin ("channel i"),
# with a plain chanlite connection, and answers "sent" once it has committed.
SENDER = textwrap.dedent(
    """
    import sys, chanlite, msgpack
    conn = chanlite.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    for line in sys.stdin:
        channel, i = line.split()
        body = msgpack.packb({"type": "wake", "i": int(i)}, use_bin_type=True)
        conn.execute("SELECT channel_send(?, ?)", (channel, body))
        sys.stdout.write("sent\\n")
        sys.stdout.flush()
    """
)

# Another OS process that sends with a layer of its own.
LAYER_SENDER = textwrap.dedent(
    """
    import asyncio, sys
    from chanlite.layer import SQLiteChannelLayer

    async def main(path, channels):
        layer = SQLiteChannelLayer(path=path)
        for channel in channels:
            await layer.send(channel, {"type": "from.elsewhere", "pid": __import__("os").getpid()})
        await layer.close()

    asyncio.run(main(sys.argv[1], sys.argv[2:]))
    """
)


class Sender:
    """The SENDER process, driven line by line."""

    def __init__(self, db_path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SENDER, db_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def send(self, channel: str, i: int) -> None:
        """Ask for a send; does not wait for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{channel} {i}\n")
        self.proc.stdin.flush()

    def sent(self) -> None:
        """Wait (blocking) until the next asked-for send has committed."""
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "sent\n"

    def send_and_wait(self, channel: str, i: int) -> None:
        self.send(channel, i)
        self.sent()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


async def _send_from_another_process(db_path: str, *channels: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAYER_SENDER, db_path, *channels
    )
    assert await asyncio.wait_for(proc.wait(), 30) == 0


def _inotify_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass  # the directory's own descriptor, closed by now
    return count


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition that other tasks and threads make true (a
    condition wait with a deadline: nothing here asserts on speed)."""
    for _ in range(20_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def layer(db_path: str) -> AsyncIterator[SQLiteChannelLayer]:
    instance = SQLiteChannelLayer(path=db_path)
    yield instance
    await instance.close()


def _listening(layer: SQLiteChannelLayer) -> int:
    """How many receivers of layer wait for the bell now, in any loop."""
    assert layer.wake_method != "polling", "inotify is not in use"
    with layer._lock:
        bell = layer.transport._bell
        return 0 if bell is None else sum(bell.loops.values())


# ---- (a) woken by another process's commit ----


@needs_inotify
async def test_receive_wakes_on_another_process_send(layer: SQLiteChannelLayer) -> None:
    assert layer.path is not None
    specific = await layer.new_channel()
    normal = asyncio.create_task(layer.receive("elsewhere"))
    local = asyncio.create_task(layer.receive(specific))
    await _until(lambda: _listening(layer) == 2, "both receivers wait for the bell")
    assert layer.wake_method == "inotify"
    await _send_from_another_process(layer.path, "elsewhere", specific)
    for task in (normal, local):
        message = await asyncio.wait_for(task, 10)
        assert message["type"] == "from.elsewhere"
        assert message["pid"] != os.getpid()


# ---- (b) the race: a commit between the look and the wait ----


@needs_inotify
async def test_never_sleeps_through_a_commit(
    layer: SQLiteChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds of: start a receive(), then have another process send exactly
    one message, (1) once the receiver has entered its wait, (2) at once,
    while the receiver may be arming, looking or starting to wait, or (3)
    forced into the window: the receiver's look has found nothing and the
    commit (and its ring) lands before the receiver gets to wait. A message
    slept through shows as the 10 s timeout."""
    assert layer.path is not None
    sender = Sender(layer.path)
    rng = random.Random(4)
    entered_wait = asyncio.Event()
    original_wait = _Queue.wait_for_messages

    async def spy_wait(self: _Queue, *args: Any) -> None:
        entered_wait.set()
        await original_wait(self, *args)

    monkeypatch.setattr(_Queue, "wait_for_messages", spy_wait)

    window: dict[str, Any] = {"round": None, "hits": 0}
    original_fetch = layer.transport._recv_batch_on  # every pop, on the loop thread or the pool

    def fetch_then_commit(conn: sqlite3.Connection, queue: str, want: int) -> Any:
        rows = original_fetch(conn, queue, want)
        target = window["round"]
        if target is not None and not rows and queue == layer.non_local_name(target[0]):
            window["round"] = None
            sender.send_and_wait(*target)  # committed and rung, before the wait
            window["hits"] += 1
        return rows

    monkeypatch.setattr(layer.transport, "_recv_batch_on", fetch_then_commit)
    specific = await layer.new_channel()
    counts = {"waiting": 0, "at once": 0, "window": 0}
    try:
        for i in range(300):
            channel = "race" if i % 2 else specific
            how = ("waiting", "at once", "window")[i % 3]
            counts[how] += 1
            entered_wait.clear()
            if how == "window":
                window["round"] = (channel, i)
            receiving = asyncio.create_task(layer.receive(channel))
            if how == "waiting":
                await entered_wait.wait()
                sender.send(channel, i)
            elif how == "at once":
                for _ in range(rng.randrange(3)):
                    await asyncio.sleep(0)
                sender.send(channel, i)
            message = await asyncio.wait_for(receiving, timeout=10)
            assert message == {"type": "wake", "i": i}
            if how != "window":
                await asyncio.to_thread(sender.sent)
            assert window["round"] is None
    finally:
        sender.close()
    assert window["hits"] == counts["window"] == 100
    assert layer.wake_method == "inotify"


# ---- (c) buffered messages expire at their expires_at ----


async def test_buffered_message_expires_exactly(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=10)
    channel = await layer.new_channel()
    start = 1_900_000_000.0
    layer.set_clock(start)
    await layer.send(channel, {"type": "first"})
    await layer.send(channel, {"type": "buffered"})  # expires at start + 10
    layer.set_clock(start + 5)
    # One receive pops both (a process-specific queue is drained in batches):
    # the second waits in this process's buffer.
    assert (await layer.receive(channel))["type"] == "first"
    queue = layer._queues[layer.non_local_name(channel)]
    with layer._lock:
        assert [expires for expires, _ in queue.buffers[channel]] == [start + 10]
    # Due at start + 10: not delivered at that instant (arrival + expiry would
    # have said start + 15), and dropped from the buffer.
    layer.set_clock(start + 10)
    await layer.send(channel, {"type": "fresh"})
    assert (await asyncio.wait_for(layer.receive(channel), 10))["type"] == "fresh"
    with layer._lock:
        assert channel not in queue.buffers
    await layer.close()


async def test_buffered_message_delivered_before_expiry(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=10)
    channel = await layer.new_channel()
    start = 1_900_000_000.0
    layer.set_clock(start)
    await layer.send(channel, {"type": "first"})
    await layer.send(channel, {"type": "buffered"})
    assert (await layer.receive(channel))["type"] == "first"
    layer.set_clock(start + 9.5)
    assert (await layer.receive(channel))["type"] == "buffered"
    await layer.close()


async def test_buffered_messages_swept(db_path: str) -> None:
    """Expired messages of a channel nobody receives leave the buffer too."""
    layer = SQLiteChannelLayer(path=db_path, expiry=10)
    unread, read = await layer.new_channel(), await layer.new_channel()
    start = 1_900_000_000.0
    layer.set_clock(start)
    await layer.send(unread, {"type": "never read"})
    await layer.send(read, {"type": "m"})
    assert (await layer.receive(read))["type"] == "m"
    queue = layer._queues[layer.non_local_name(read)]
    assert len(queue.buffers[unread]) == 1
    layer.set_clock(start + 10)
    with layer._lock:
        queue._sweep()
        assert unread not in queue.buffers
    await layer.close()


# ---- (d) idle means idle ----


@needs_inotify
async def test_idle_receivers_make_no_calls(layer: SQLiteChannelLayer) -> None:
    """100 receivers blocked in receive(): no SQLite call, no timer, until a
    commit rings the bell."""
    assert layer.path is not None
    calls = {"n": 0}
    original_submit = layer.transport._submit

    def counting_submit(fn: Callable[..., Any], *args: Any) -> Any:
        calls["n"] += 1
        return original_submit(fn, *args)

    layer.transport._submit = counting_submit  # type: ignore[method-assign]
    original_on_loop = layer.transport._try_on_loop  # calls made on the loop's own thread

    def counting_on_loop(fn: Callable[..., Any], *args: Any) -> Any:
        calls["n"] += 1
        return original_on_loop(fn, *args)

    layer.transport._try_on_loop = counting_on_loop  # type: ignore[method-assign]
    channels = [f"idle-{i}" for i in range(100)]
    tasks = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    await _until(lambda: _listening(layer) == 100, "all 100 receivers wait for the bell")
    assert layer.wake_method == "inotify"
    loop = asyncio.get_running_loop()
    # Deterministic: nothing is due in this loop, so nothing can look later.
    timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert timers == []
    calls["n"] = 0
    await asyncio.sleep(0.2)  # nothing is sent: nothing may happen
    assert calls["n"] == 0
    assert _listening(layer) == 100
    assert not any(task.done() for task in tasks)

    await _send_from_another_process(layer.path, "idle-42")
    assert (await asyncio.wait_for(tasks[42], 10))["type"] == "from.elsewhere"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert _listening(layer) == 0


# ---- descriptors and event loops ----


@needs_inotify
async def test_one_descriptor_per_layer_and_no_leaks(db_path: str) -> None:
    before, inotify_before = _fds(), _inotify_fds()
    layer = SQLiteChannelLayer(path=db_path)
    tasks = [asyncio.create_task(layer.receive(f"fd-{i}")) for i in range(20)]
    tasks.append(asyncio.create_task(layer.receive(await layer.new_channel())))
    await _until(lambda: _listening(layer) == 21, "21 receivers wait")
    assert _inotify_fds() == inotify_before + 1  # one for all of them

    # A loop that goes away while its receiver waits: asyncio.run cancels the
    # receiver, which stops listening in that loop.
    def other_loop() -> None:
        async def main() -> None:
            asyncio.create_task(layer.receive("fd-other"))  # noqa: RUF006
            for _ in range(20_000):
                if _listening(layer) == 22:
                    return
                await asyncio.sleep(0.001)
            raise AssertionError("the other loop's receiver never waited")

        asyncio.run(main())

    await asyncio.to_thread(other_loop)
    assert _listening(layer) == 21
    with layer._lock:
        assert layer.transport._bell is not None
        assert list(layer.transport._bell.loops) == [asyncio.get_running_loop()]

    # async_to_sync: a loop of its own per call.
    await layer.send("fd-sync", {"type": "sync"})
    got = await asyncio.to_thread(async_to_sync(layer.receive), "fd-sync")
    assert got["type"] == "sync"
    assert _inotify_fds() == inotify_before + 1

    await layer.close()  # the receivers are cancelled; the bell closes
    await asyncio.gather(*tasks, return_exceptions=True)
    assert _inotify_fds() == inotify_before
    assert _fds() == before

    # Used again after close(): a new bell, closed again by close().
    await layer.send("fd-again", {"type": "again"})
    waiting = asyncio.create_task(layer.receive("fd-again2"))
    assert (await layer.receive("fd-again"))["type"] == "again"
    await _until(lambda: _listening(layer) == 1, "the new receiver waits")
    assert _inotify_fds() == inotify_before + 1
    await layer.close()
    await asyncio.gather(waiting, return_exceptions=True)
    assert _inotify_fds() == inotify_before
    assert _fds() == before


@needs_inotify
async def test_receivers_in_several_loops_all_wake(layer: SQLiteChannelLayer) -> None:
    """One descriptor, read by whichever loop gets there first: every loop's
    receivers still wake."""
    assert layer.path is not None
    results: dict[str, Any] = {}
    ready = threading.Barrier(4)

    def in_own_loop(channel: str) -> None:
        async def main() -> None:
            task = asyncio.create_task(layer.receive(channel))
            for _ in range(20_000):
                with layer._lock:
                    bell = layer.transport._bell
                    mine = bell is not None and bell.loops.get(asyncio.get_running_loop())
                if mine:
                    break
                await asyncio.sleep(0.001)
            await asyncio.to_thread(ready.wait, 30)
            results[channel] = await asyncio.wait_for(task, 10)

        asyncio.run(main())

    threads = [
        threading.Thread(target=in_own_loop, args=(f"loop-{i}",), daemon=True) for i in range(3)
    ]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(ready.wait, 30)
    await _send_from_another_process(layer.path, "loop-0", "loop-1", "loop-2")
    for thread in threads:
        await asyncio.to_thread(thread.join, 30)
    assert sorted(results) == ["loop-0", "loop-1", "loop-2"]
    assert _listening(layer) == 0


# ---- the fallback: polling ----


def _fail_watch(path: str) -> int:
    raise OSError(24, "Too many open files (the test)")


@pytest.fixture(params=["wake='polling'", "no inotify", "inotify fails"])
async def polling_layer(
    request: pytest.FixtureRequest, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SQLiteChannelLayer]:
    """A layer whose receivers poll: configured so, or since inotify is
    missing or fails."""
    if request.param == "no inotify":
        monkeypatch.setattr(_inotify, "available", lambda: "disabled by the test")
    elif request.param == "inotify fails":
        monkeypatch.setattr(_inotify, "watch", _fail_watch)
    instance = SQLiteChannelLayer(
        path=db_path, wake="polling" if request.param == "wake='polling'" else "auto"
    )
    yield instance
    await instance.close()


async def _core(layer: SQLiteChannelLayer) -> None:
    assert layer.path is not None
    await layer.send("core", {"type": "one"})
    assert (await layer.receive("core"))["type"] == "one"
    for i in range(20):
        await layer.send("core-fifo", {"type": "fifo", "i": i})
    assert [(await layer.receive("core-fifo"))["i"] for i in range(20)] == list(range(20))
    specific = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(specific))
    await layer.send(specific, {"type": "local"})
    assert (await asyncio.wait_for(waiting, 10))["type"] == "local"
    # From another process: found by looking again.
    waiting = asyncio.create_task(layer.receive("core-elsewhere"))
    await _send_from_another_process(layer.path, "core-elsewhere")
    assert (await asyncio.wait_for(waiting, 10))["type"] == "from.elsewhere"
    # A cancelled receive leaves its message for the next.
    for attempt in range(30):
        waiting = asyncio.create_task(layer.receive(specific))
        await layer.send(specific, {"type": "m", "i": attempt})
        for _ in range(attempt % 5):
            await asyncio.sleep(0)
        waiting.cancel()
        try:
            got = await waiting
        except asyncio.CancelledError:
            got = await asyncio.wait_for(layer.receive(specific), 10)
        assert got["i"] == attempt


async def test_fallback_polling(polling_layer: SQLiteChannelLayer) -> None:
    await _core(polling_layer)
    assert polling_layer.wake_method == "polling"
    with polling_layer._lock:
        assert polling_layer.transport._bell is None


@needs_inotify
async def test_core_with_inotify(layer: SQLiteChannelLayer) -> None:
    await _core(layer)
    assert layer.wake_method == "inotify"


async def test_wake_config_is_checked(db_path: str) -> None:
    with pytest.raises(ValueError, match="wake"):
        SQLiteChannelLayer(path=db_path, wake="sometimes")


@needs_inotify
async def test_wake_method_logged_once(
    layer: SQLiteChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="chanlite")
    for i in range(3):
        await layer.send("logged", {"type": "m", "i": i})
        assert (await layer.receive("logged"))["i"] == i
    waiting = asyncio.create_task(layer.receive("logged"))
    await _until(lambda: _listening(layer) == 1, "the receiver waits")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    said = [r.getMessage() for r in caplog.records if "wake by" in r.getMessage()]
    assert len(said) == 1 and "inotify" in said[0], said


# ---- no look that could find nothing ----


@needs_inotify
async def test_no_second_look_at_an_emptied_queue(layer: SQLiteChannelLayer) -> None:
    """A receive() after one whose look emptied the queue waits without
    looking again, since nothing rang; a commit of another process made
    while no receiver waited still rang the watched bell, so the next
    receive() looks and gets it."""
    assert layer.path is not None
    sender = Sender(layer.path)
    looks = {"n": 0}
    original = layer.transport._recv_batch_on

    def counting(conn: sqlite3.Connection, queue: str, want: int) -> Any:
        looks["n"] += 1
        return original(conn, queue, want)

    layer.transport._recv_batch_on = counting  # type: ignore[method-assign]
    specific = await layer.new_channel()
    try:
        first = asyncio.create_task(layer.receive(specific))
        await _until(lambda: _listening(layer) == 1, "the receiver waits")
        await asyncio.to_thread(sender.send_and_wait, specific, 1)
        assert await asyncio.wait_for(first, 10) == {"type": "wake", "i": 1}

        looks["n"] = 0
        second = asyncio.create_task(layer.receive(specific))
        await _until(lambda: _listening(layer) == 1, "the second receiver waits")
        assert looks["n"] == 0, "looked again at a queue known to be empty"
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)

        # Sent while nobody listens to the bell: its ring waits in the watch.
        await asyncio.to_thread(sender.send_and_wait, specific, 2)
        assert await asyncio.wait_for(layer.receive(specific), 10) == {"type": "wake", "i": 2}
        assert looks["n"] >= 1
    finally:
        sender.close()


def test_a_recreated_bell_follows_the_extensions_rules(tmp_path: Path) -> None:
    """After the bell was deleted, receivers recreate it as ext/wake.c
    creates it: the database's permission bits whatever the umask, never
    through a symlink, never blocking on a FIFO."""
    from chanlite.local import _recreate_bell

    db = tmp_path / "app.db"
    db.write_bytes(b"")
    db.chmod(0o660)
    bell = str(db) + "-chanlite"
    old = os.umask(0o077)
    try:
        _recreate_bell(bell)
    finally:
        os.umask(old)
    assert os.stat(bell).st_mode & 0o777 == 0o660
    _recreate_bell(bell)  # an existing bell is left as it is
    assert os.stat(bell).st_mode & 0o777 == 0o660

    os.unlink(bell)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    os.symlink(target, bell)
    with pytest.raises(OSError):
        _recreate_bell(bell)
    assert target.read_bytes() == b"keep"

    os.unlink(bell)
    os.mkfifo(bell)
    with pytest.raises(OSError):  # ENXIO: no reader; never a hang
        _recreate_bell(bell)
