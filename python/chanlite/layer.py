"""The Django Channels channel layer on chanlite.

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chanlite.layer.SQLiteChannelLayer",
            "CONFIG": {"path": BASE_DIR / "channels.sqlite3"},   # or {"database": "default"}
        },
    }

Every operation is one chanlite SQL call. Sends and pops run on the event
loop's thread, on a connection of its own whose busy timeout is 0, so that
they never wait for a lock there: one that would fails at once, having done
nothing, and runs again on a small pool of threads that each hold a
connection (WAL, synchronous=NORMAL, a busy timeout), as every other call
does. A database locked past the busy timeout is retried with a backoff.

Receiving. A process keeps, per SQLite queue it receives from (one
``prefix!`` for all of its process-specific channels, or one normal channel),
a :class:`_Queue`: bounded per-channel buffers, the receive() calls waiting
on them, and at most one receiver task that pops messages from SQLite into
the buffers while anybody waits (and stops when nobody does). A message
popped from SQLite is only ever put in a buffer; a receive() takes one out
and returns it in the same step, with no await in between, so a receive()
cancelled at any point has taken nothing, and whatever the receiver popped
stays buffered for the next receive() of that channel. The buffers are shared
by every event loop of the process (async_to_sync runs each call in a loop of
its own).

Waking. A receiver that finds its queue empty waits for the extension's bell
(``<database>-chanlite``, rung after every committed send of any process): on
Linux, one inotify descriptor per layer and process (:class:`_Bell`), read by
the event loops whose receivers wait, with ``add_reader``; no thread, no timer.
A receiver arms before it looks (the watch exists and is drained, and it notes
its queue's wake count), so a commit between its look and its wait leaves a
ring that wakes it. Elsewhere (not Linux, inotify failing, ``wake="polling"``)
it looks again with a backoff from 1 to 50 ms. ``layer.wake_method`` says which.

Forking. A layer used before ``fork()`` (gunicorn ``--preload``, Celery's
prefork pool, ``multiprocessing``, daphne's test server) works in the child
at once. Just before a fork, each layer waits for its calls in SQLite to end
(:class:`_ForkGate`) and closes its connections, so that no SQLite
connection crosses the fork (SQLite forbids it: the child would share the
parent's lock records without its locks). In the child it starts afresh: new
connections, thread pool, bell watch and process-specific prefix; what the
parent had buffered stays the parent's. The parent opens its connections
again on its next call. Fork from synchronous code, as servers and
``multiprocessing`` do: a child that carries on running the parent's event
loop is not something asyncio supports.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import fnmatch
import functools
import hashlib
import json
import logging
import os
import random
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

import chanlite
from chanlite import _inotify

__all__ = ["ChannelFull", "DatabaseLocked", "SQLiteChannelLayer", "glob_for_pattern"]

T = TypeVar("T")

#: Most messages one receiver pops from SQLite in one call.
BATCH = 100
#: ... for a prefix! queue whose channels are hungry, one each: a group_send
#: to a process's many members is then popped in one transaction, not one
#: per 100 (each of which waits for the write lock again).
LOCAL_BATCH_MAX = 1000
#: Poll intervals where the bell cannot be watched (see _Queue.wait_for_messages).
POLL_MIN = 0.001
POLL_MAX = 0.05

logger = logging.getLogger("chanlite")


def glob_for_pattern(pattern: str | re.Pattern[str]) -> str:
    """The SQLite GLOB equivalent of a channel_capacity key.

    A string is a glob already (as in channels_redis). A compiled regex is
    translated when it is a plain one (literals, ``.``, ``.*``, anchors, or
    what ``fnmatch.translate`` makes); anything else raises ValueError, since
    chanlite matches capacities in SQL, by GLOB.
    """
    if isinstance(pattern, str):
        if not pattern:
            raise ValueError("chanlite: a channel_capacity pattern must not be empty")
        return pattern
    if not isinstance(pattern, re.Pattern):
        raise TypeError(
            f"chanlite: channel_capacity keys must be glob strings or compiled regexes, "
            f"not {type(pattern).__name__}"
        )
    source = pattern.pattern
    wrapped = re.fullmatch(r"\(\?s:(.*)\)\\Z", source, re.S)  # fnmatch.translate's form
    if wrapped:
        source, anchored = wrapped.group(1), True
    else:
        anchored = False
        for end in ("\\Z", "$"):
            if source.endswith(end) and not source.endswith("\\" + end):
                source, anchored = source[: -len(end)], True
                break
    source = source.removeprefix("^")
    glob: list[str] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if ch == "\\" and i + 1 < len(source) and not source[i + 1].isalnum():
            literal = source[i + 1]
            if literal in "*?[]":
                break
            glob.append(literal)
            i += 2
        elif source.startswith(".*", i):
            glob.append("*")
            i += 2
        elif ch == ".":
            glob.append("?")
            i += 1
        elif ch.isalnum() or ch in "-_!":
            glob.append(ch)
            i += 1
        else:
            break
    else:
        if not anchored and glob[-1:] != ["*"]:
            glob.append("*")
        return "".join(glob)
    raise ValueError(
        f"chanlite: channel_capacity regex {pattern.pattern!r} has no GLOB equivalent: "
        "use a glob string such as 'http.response!*' (chanlite matches capacities in SQL)"
    )


class _Backoff:
    """The adaptive poll interval: short after activity, longer while idle."""

    def __init__(self) -> None:
        self.delay = POLL_MIN

    def reset(self) -> None:
        self.delay = POLL_MIN

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, POLL_MAX)
        return delay


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def _cancel(fut: asyncio.Future[Any]) -> None:
    fut.cancel()


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _call_in(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run fn in loop: now when that is the running loop (fn only resolves
    or cancels a future, which runs nothing inline), else soon, from any
    thread; a loop that is gone is ignored. Doing it now saves a wake-up of
    the loop through its self-pipe on the way to every message."""
    if asyncio._get_running_loop() is loop:
        fn(*args)
        return
    with contextlib.suppress(RuntimeError):  # loop closed
        loop.call_soon_threadsafe(fn, *args)


class DatabaseLocked(sqlite3.OperationalError):
    """A layer call found the database locked (another connection held the
    write lock past the busy timeout) for longer than the layer's
    lock_timeout. The call did nothing, so retrying it cannot duplicate."""


#: Backoff between attempts on a locked database: doubling from LOCK_PAUSE_MIN
#: to LOCK_PAUSE_MAX, each pause drawn from its upper half, so that processes
#: that failed together do not all come back at the same instant.
LOCK_PAUSE_MIN = 0.05
LOCK_PAUSE_MAX = 1.0


def _is_locked(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY (the write lock, past the busy timeout) or SQLITE_LOCKED
    (a table of a shared-cache database), any extended code."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(error)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _lock_pause(attempt: int) -> float:
    top = min(LOCK_PAUSE_MAX, LOCK_PAUSE_MIN * 2 ** (attempt - 1))
    return random.uniform(top / 2, top)


def _pause_or_give_up(
    what: str, error: sqlite3.Error, attempt: int, started: float, layer: SQLiteChannelLayer
) -> float:
    """After attempt number `attempt` at a call found the database locked:
    the pause before the next (logged), or DatabaseLocked once lock_timeout
    would be passed. Shared by the async calls and chanlite.sync."""
    elapsed = time.monotonic() - started
    pause = _lock_pause(attempt)
    if elapsed + pause > layer.lock_timeout:
        logger.error(
            "chanlite: %s gave up: database locked for %.1f s (%d attempts)",
            what,
            elapsed,
            attempt,
        )
        raise DatabaseLocked(
            f"chanlite: database is locked: {what} gave up after {attempt} attempts in "
            f"{elapsed:.1f} s (lock_timeout {layer.lock_timeout} s, busy_timeout "
            f"{layer.busy_timeout} s); nothing was done, so it may be retried"
        ) from error
    _log_locked(what, attempt, pause, layer.busy_timeout)
    return pause


def _log_locked(what: str, attempt: int, pause: float, busy_timeout: float) -> None:
    logger.warning(
        "chanlite: %s: database locked past the busy timeout (%s s); retry %d in %.0f ms",
        what,
        busy_timeout,
        attempt,
        pause * 1000,
    )


class _OnPool:
    """The marker for "do it in the pool instead" (see _try_on_loop)."""


_ON_POOL = _OnPool()


class _LoopConnection:
    """A connection used only by one event loop's thread, whose busy timeout
    is 0; conn None where the database allows none (not in WAL mode)."""

    def __init__(self, conn: sqlite3.Connection | None) -> None:
        self.conn = conn
        self.clock_generation = -1


#: In SQLiteChannelLayer._loop_conns while a thread's loop connection opens.
_OPENING = _LoopConnection(None)

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
#: A popped message: (channel, body, expires_at on the chanlite clock).
_Row = tuple[str, bytes | str, float]


class _ForkGate:
    """Counts the layer's calls that are inside SQLite, so that a fork()
    can wait for them to end and then close the connections while none is
    in use. Entered once per call, on the thread that runs it (never nested,
    and never while holding the layer's lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._shut = 0  # a fork or close() is under way: new calls wait for it

    def enter(self) -> None:
        with self._cond:
            while self._shut:
                self._cond.wait()
            self._inside += 1

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            if self._inside == 0 and self._shut:
                self._cond.notify_all()

    def shut(self, timeout: float) -> bool:
        """Stop new calls and wait for those inside to end; False if some
        were still inside after timeout (the gate stays shut either way,
        until as many open() calls as shut() calls)."""
        with self._cond:
            self._shut += 1
            return self._cond.wait_for(lambda: self._inside == 0, timeout)

    def open(self) -> None:
        with self._cond:
            self._shut -= 1
            if not self._shut:
                self._cond.notify_all()


#: Called with a layer just before a fork, once its gate is shut and its own
#: connections are closed: other modules' connections on the layer's behalf
#: (chanlite.sync's pools) close there too.
BEFORE_FORK_CLOSE: list[Callable[[SQLiteChannelLayer], None]] = []
#: Every layer of the process, for the fork handlers below.
_LAYERS: weakref.WeakSet[SQLiteChannelLayer] = weakref.WeakSet()
#: Connections a child inherited still open (its parent could not close them
#: before the fork): kept referenced, never used and never closed, since
#: closing them in the child could undo the parent's work in the WAL index.
_INHERITED: list[sqlite3.Connection] = []


def _before_fork() -> None:
    for layer in list(_LAYERS):
        layer._before_fork()


def _after_fork_in_parent() -> None:
    for layer in list(_LAYERS):
        layer._after_fork_in_parent()


def _after_fork_in_child() -> None:
    _MemoryDatabase.after_fork_in_child()
    for layer in list(_LAYERS):
        layer._after_fork_in_child()


def _reinit_lock(lock: Any) -> Any:
    """lock, unlocked, in a child whose parent may have forked while another
    thread held it; the same object where Python can (objects that captured
    it keep working), else a new one."""
    reinit = getattr(lock, "_at_fork_reinit", None)
    if reinit is None:
        return threading.Lock()
    reinit()
    return lock


class _Bell:
    """This process's watch on the extension's bell, for one layer: an inotify
    descriptor that becomes readable when any process commits a send.

    It is registered (``add_reader``) in each event loop that has receivers
    waiting, and only while they wait; whichever loop finds it readable drains
    it and wakes every receiver of the layer, in any loop. Guarded by the
    layer's lock. A retired bell (the layer closed) closes its descriptor once
    no loop has it registered.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = _inotify.watch(path)
        self.pid = os.getpid()
        self.loops: dict[asyncio.AbstractEventLoop, int] = {}  # loop -> receivers waiting
        self.retired = False
        self.fd_open = True

    def current(self) -> bool:
        """Usable for a new wait: not retired, and this process's (not a fork's)."""
        return not self.retired and self.pid == os.getpid()

    def listen(self, loop: asyncio.AbstractEventLoop, callback: Callable[[_Bell], None]) -> None:
        """One more receiver of loop waits for the bell."""
        for gone in [other for other in self.loops if other.is_closed()]:
            del self.loops[gone]  # closed with a receiver waiting: its selector is gone
        waiting = self.loops.get(loop, 0)
        if waiting == 0:
            loop.add_reader(self.fd, callback, self)
        self.loops[loop] = waiting + 1

    def unlisten(self, loop: asyncio.AbstractEventLoop) -> None:
        """One receiver of loop no longer waits."""
        waiting = self.loops.get(loop, 0) - 1
        if waiting > 0:
            self.loops[loop] = waiting
            return
        self.loops.pop(loop, None)
        if not loop.is_closed():  # a closed loop's selector is gone, and our fd with it
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                loop.remove_reader(self.fd)
        if self.retired and not self.loops:
            self._close_fd()

    def drain(self) -> tuple[bool, bool]:
        """(rang, lost): see _inotify.drain."""
        if not self.fd_open or self.pid != os.getpid():
            return False, False
        return _inotify.drain(self.fd)

    def rewatch(self) -> bool:
        """Watch the bell again after its file went away (recreating it, as
        the extension does); False if that cannot be done."""
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            _inotify.add_watch(self.fd, self.path)
        except OSError as e:
            logger.warning("chanlite: cannot watch the bell %s again: %s", self.path, e)
            return False
        return True

    def retire(self) -> None:
        """No new waits; the descriptor closes once no loop has it registered."""
        self.retired = True
        if self.pid != os.getpid():  # inherited through fork: the parent's loops are not ours
            self.loops.clear()
        for loop in [loop for loop in self.loops if loop.is_closed()]:
            del self.loops[loop]
        if not self.loops:
            self._close_fd()

    def _close_fd(self) -> None:
        if self.fd_open:
            self.fd_open = False
            with contextlib.suppress(OSError):
                os.close(self.fd)


class _Queue:
    """What this process holds of one SQLite queue: for a process-specific
    ``prefix!``, every ``prefix!local`` channel; otherwise one channel.

    All state is guarded by the layer's lock, since receive() may run in
    several event loops (threads) at once.
    """

    def __init__(self, layer: SQLiteChannelLayer, name: str) -> None:
        self.layer = layer
        self.name = name
        self.local = name.endswith("!")
        # Per channel, (expires_at, body): expires_at on the chanlite clock.
        self.buffers: dict[str, collections.deque[tuple[float, bytes | str]]] = {}
        self.waiters: dict[str, list[_Waiter]] = {}
        self.task: asyncio.Task[None] | None = None
        self.task_loop: asyncio.AbstractEventLoop | None = None
        self.kick_waiter: _Waiter | None = None
        # Counts kicks (a send of this process, a new receive(), the bell): a
        # receiver notes it before it looks and waits only if it has not moved.
        self.wakes = 0
        # (bell, wakes before the look) of the last look that left the queue
        # empty: until a ring or a kick moves `wakes` on, another look would
        # find nothing (every commit rings the bell, which is watched all
        # along, even while nobody listens to it).
        self.emptied: tuple[_Bell, int] | None = None
        self.dropped = 0  # messages dropped from full buffers
        self.last_sweep = time.monotonic()

    # -- receive() side --

    async def get(self, channel: str) -> bytes | str:
        """The next message of channel, waiting for it if need be."""
        loop = asyncio.get_running_loop()
        lock = self.layer._lock
        while True:
            with lock:
                item = self._take(channel)
                if item is not None:
                    self.layer._forget_if_idle(self)
                    return item  # taken and returned in one step: nothing to lose
                fut: asyncio.Future[None] = loop.create_future()
                waiter = (loop, fut)
                self.waiters.setdefault(channel, []).append(waiter)
                self._ensure_receiver(loop)
            try:
                await fut
            finally:
                with lock:
                    waiting = self.waiters.get(channel, [])
                    with contextlib.suppress(ValueError):
                        waiting.remove(waiter)
                    if not waiting:
                        self.waiters.pop(channel, None)
                    # For a prefix! queue, _demand() scans every channel, and
                    # each of a fan-out's members passes here: look only when
                    # this channel stopped being hungry (its last waiter left
                    # an empty buffer), the one way leaving can end demand.
                    if (
                        self.task is not None
                        and (not self.local or (not waiting and not self.buffers.get(channel)))
                        and self._demand() == 0
                    ):
                        self._kick()  # a waiting receiver stops: nobody needs it
                    self.layer._forget_if_idle(self)

    def _take(self, channel: str) -> bytes | str | None:
        buffer = self.buffers.get(channel)
        if not buffer:
            return None
        now = self.layer._now()
        while buffer and buffer[0][0] <= now:
            buffer.popleft()  # expired while buffered: never delivered
        item = buffer.popleft()[1] if buffer else None
        if not buffer:
            del self.buffers[channel]
        return item

    def _ensure_receiver(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the receiver unless one is running (lock held)."""
        task, task_loop = self.task, self.task_loop
        if (
            task is not None
            and not task.done()
            and task_loop is not None
            and not task_loop.is_closed()
            and task_loop.is_running()
        ):
            self._kick()
            return
        self.task_loop = loop
        self.task = loop.create_task(self._run(), name=f"chanlite receiver {self.name}")

    def _kick(self) -> None:
        """Make the receiver look (again) at once (lock held)."""
        self.wakes += 1
        if self.kick_waiter is not None:
            loop, fut = self.kick_waiter
            self.kick_waiter = None
            _call_in(loop, _resolve, fut)

    # -- the receiver --

    def _demand(self) -> int:
        """How many messages to pop now (lock held)."""
        if self.local:
            hungry = sum(1 for ch in self.waiters if not self.buffers.get(ch))
            return min(LOCAL_BATCH_MAX, max(BATCH, hungry)) if hungry else 0
        waiting = len(self.waiters.get(self.name, ()))
        return min(BATCH, max(0, waiting - len(self.buffers.get(self.name, ()))))

    async def _run(self) -> None:
        me = asyncio.current_task()
        lock = self.layer._lock
        idle = _Backoff()
        locked = 0  # attempts in a row that found the database locked
        try:
            while True:
                with lock:
                    if self._demand() == 0 or self.task is not me:
                        if self.task is me:
                            self.task = None
                        return
                try:
                    bell = await self.layer._arm()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
                        locked += 1
                        await self._pause_locked(locked)
                        continue
                    self._fail_waiters(exc)
                    return
                with lock:
                    want = self._demand()
                    if want == 0 or self.task is not me:
                        if self.task is me:
                            self.task = None
                        return
                    # Armed before looking: the watch exists and is drained
                    # now, so a commit after this leaves a ring behind, and a
                    # ring or kick from now on moves `wakes` past `seen`.
                    if bell is not None:
                        self.layer._drain(bell)
                    seen = self.wakes
                    # The last look emptied the queue and nothing has rung or
                    # kicked since it began: it would find nothing, so wait.
                    skip_look = bell is not None and self.emptied == (bell, seen)
                try:
                    rows = [] if skip_look else await self._fetch(want)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
                        locked += 1
                        await self._pause_locked(locked)
                        continue
                    self._fail_waiters(exc)
                    return
                if locked:
                    logger.info(
                        "chanlite: receive from %r succeeded after %d retries", self.name, locked
                    )
                    locked = 0
                if len(rows) < want:
                    with lock:
                        self.emptied = (bell, seen) if bell is not None else None
                if rows:
                    self._dispatch(rows)
                    idle.reset()
                else:
                    await self.wait_for_messages(idle, bell, seen)
        finally:
            with lock:
                if self.task is me:
                    self.task = None
                self.layer._forget_if_idle(self)

    async def _pause_locked(self, attempt: int) -> None:
        """Wait before looking again at a database that was locked past the
        busy timeout. Receivers retry for as long as somebody waits: a
        receive() is a wait already, and cancelling it stops this."""
        pause = _lock_pause(attempt)
        _log_locked(f"receive from {self.name!r}", attempt, pause, self.layer.busy_timeout)
        await asyncio.sleep(pause)

    async def _fetch(self, want: int) -> list[_Row]:
        """Pop up to want messages: on this thread if that cannot wait for a
        lock (see SQLiteChannelLayer._try_on_loop), else in the pool. The pop
        cannot be undone, so a cancellation waits for it and buffers what it
        popped before ending."""
        rows = self.layer._try_on_loop(self.layer._recv_batch_on, self.name, want)
        if rows is not _ON_POOL:
            return rows
        fut = self.layer._submit(self.layer._sync_recv_batch, self.name, want)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                while not fut.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(fut)
                self._dispatch(fut.result())
            raise

    def _dispatch(self, rows: Iterable[_Row]) -> None:
        with self.layer._lock:
            touched = set()
            for channel, body, expires_at in rows:
                buffer = self.buffers.get(channel)
                if buffer is None:
                    buffer = self.buffers[channel] = collections.deque()
                if len(buffer) >= self.layer._buffer_size(channel):
                    buffer.popleft()  # bounded, as channels_redis: the oldest goes
                    self.dropped += 1
                    logger.warning(
                        "chanlite: %s holds %d unreceived messages (its capacity);"
                        " dropped the oldest",
                        channel,
                        len(buffer) + 1,
                    )
                buffer.append((expires_at, body))
                touched.add(channel)
            for channel in touched:
                for loop, fut in self.waiters.get(channel, ()):
                    _call_in(loop, _resolve, fut)
            if (tick := time.monotonic()) - self.last_sweep > 1.0:
                self.last_sweep = tick
                self._sweep()

    def _sweep(self) -> None:
        """Drop expired messages of channels nobody receives (lock held)."""
        now = self.layer._now()
        for channel in list(self.buffers):
            buffer = self.buffers[channel]
            while buffer and buffer[0][0] <= now:
                buffer.popleft()
            if not buffer:
                del self.buffers[channel]

    def _fail_waiters(self, exc: BaseException) -> None:
        with self.layer._lock:
            for waiting in self.waiters.values():
                for loop, fut in waiting:
                    _call_in(loop, _fail, fut, exc)

    async def wait_for_messages(self, idle: _Backoff, bell: _Bell | None, seen: int) -> None:
        """Wait until a message may have arrived in this queue: until the
        queue's wake count moves past seen (noted before the look that found
        nothing), which the bell, a send of this process to the queue, or a
        new receive() does. Without a bell, look again after a backoff
        (1 ms after activity, doubling to 50 ms while idle)."""
        loop = asyncio.get_running_loop()
        kick: asyncio.Future[None] = loop.create_future()
        listening = False
        with self.layer._lock:
            if self.wakes != seen or (bell is not None and not bell.current()):
                idle.reset()
                return  # rang or kicked since the look, or the layer closed
            self.kick_waiter = (loop, kick)
            if bell is not None:
                listening = self.layer._listen(bell, loop)
            elif self.layer.wake_method == "memory":
                listening = True  # every send of the database kicks us: see _MemoryDatabase
        try:
            if listening:
                await kick
            else:
                done, _ = await asyncio.wait({kick}, timeout=idle.next())
                if done:
                    idle.reset()
        finally:
            kick.cancel()
            with self.layer._lock:
                if self.kick_waiter is not None and self.kick_waiter[1] is kick:
                    self.kick_waiter = None
                if listening and bell is not None:
                    bell.unlisten(loop)

    def idle(self) -> bool:
        """Nothing buffered, nobody waiting, no receiver (lock held)."""
        return not self.buffers and not self.waiters and self.task is None


#: The in-memory database that ``path=":memory:"`` names.
MEMORY_DEFAULT = "file:chanlite-memory?mode=memory&cache=shared"


def _memory_uri(path: str) -> str | None:
    """The shared-cache URI of an in-memory ``path``, or None for a file."""
    if path == ":memory:":
        return MEMORY_DEFAULT
    if path.startswith("file:") and "mode=memory" in path:
        if "cache=shared" in path:
            return path
        return f"{path}{'&' if '?' in path else '?'}cache=shared"
    return None


class _MemoryDatabase:
    """An in-memory database shared by every layer of the process that names
    it (test mode): one connection, used by one thread, open for the life of
    the process, so the database outlives any layer's close() and needs no
    file and no cleanup. With one connection nobody ever waits for a lock.

    There is no bell: every send is made by a layer of this process, so a
    send wakes the receivers of every layer on the database directly.
    """

    _all: ClassVar[dict[str, _MemoryDatabase]] = {}
    _all_lock: ClassVar[threading.Lock] = threading.Lock()
    _UNSET: ClassVar[object] = object()

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="chanlite-memory"
        )
        self.conn: sqlite3.Connection | None = None  # only touched by the executor's thread
        self.clock: object = self._UNSET  # what chanlite_clock() is pinned to on conn
        self.layers: weakref.WeakSet[SQLiteChannelLayer] = weakref.WeakSet()

    @classmethod
    def named(cls, uri: str) -> _MemoryDatabase:
        with cls._all_lock:
            found = cls._all.get(uri)
            if found is None:
                found = cls._all[uri] = cls(uri)
            return found

    def connection(self) -> sqlite3.Connection:
        """The connection (in the executor's thread)."""
        if self.conn is None:
            self.conn = chanlite.connect(
                self.uri, uri=True, isolation_level=None, check_same_thread=False
            )
        return self.conn

    def kick(self, queue_name: str | None) -> None:
        """A message was sent: receivers of every layer here look again."""
        for layer in list(self.layers):
            layer._kick_queue(queue_name)

    @classmethod
    def after_fork_in_child(cls) -> None:
        """The executor's thread is the parent's: start another. The
        connection stays: the child has a copy of the database of its own
        (test mode is one process's; a forked child no longer shares it)."""
        cls._all_lock = _reinit_lock(cls._all_lock)
        for memory in cls._all.values():
            memory.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="chanlite-memory"
            )


def _tune(conn: sqlite3.Connection) -> None:
    """The settings every connection of the layer runs with (WAL and the busy
    timeout are set where the connection is opened)."""
    conn.execute("PRAGMA synchronous=NORMAL")
    # Where SQLite is built with SECURE_DELETE (Debian's is), ON also zeroes
    # every overflow page of each popped large message: 10 KB messages then
    # wrote 56 KiB each instead of 45, for 20% more CPU. FAST zeroes what it
    # can without writing more.
    conn.execute("PRAGMA secure_delete=FAST")
    conn.execute(f"PRAGMA journal_size_limit={chanlite.JOURNAL_SIZE_LIMIT}")


class SQLiteChannelLayer(BaseChannelLayer):
    """A Channels layer whose channels, groups and messages live in a SQLite
    database, through the chanlite extension.

    CONFIG: ``path`` (a database file of its own) or ``database`` (a Django
    database alias, whose file it shares: see :mod:`chanlite.django` for the
    transactional send), plus channels_redis's ``expiry`` (60),
    ``group_expiry`` (86400), ``capacity`` (100), ``channel_capacity`` (glob
    or simple regex -> capacity) and ``symmetric_encryption_keys``.
    ``busy_timeout`` (seconds, 5) and ``threads`` (4) tune the connections.
    ``lock_timeout`` (seconds, 30): how long a send, group call or flush
    keeps retrying, with a jittered backoff, a database that another
    connection keeps locked past the busy timeout, before it raises
    :class:`DatabaseLocked` (having done nothing). Receivers retry for as long
    as a receive() waits. Each retry is logged (WARNING, logger ``chanlite``).
    ``loop_calls`` (True): sends and pops run on the event loop's own thread
    when they can do so without waiting for a lock (see ``_try_on_loop``);
    False sends every call through the pool.
    ``wake``: ``"auto"`` (the default: receivers wait for the extension's bell
    with inotify where they can, else poll) or ``"polling"`` (always poll,
    with a backoff from 1 to 50 ms). Once a receiver has waited,
    ``wake_method`` says which is in use: ``"inotify"``, ``"polling"`` or
    ``"memory"``.

    Test mode: ``path=":memory:"`` (or a ``file:NAME?mode=memory`` URI) is an
    in-memory database shared by every layer of the process that names it,
    alive until the process exits (see :class:`_MemoryDatabase`).

    Settings are stored in the database (chanlite_config), so every process
    using the file should configure the same values: the last one to start
    wins.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        database: str | None = None,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str | re.Pattern[str], int] | None = None,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        busy_timeout: float = 5.0,
        threads: int = 4,
        wake: str = "auto",
        lock_timeout: float = 30.0,
        loop_calls: bool = True,
    ) -> None:
        super().__init__(capacity=capacity)
        self.expiry: float = expiry  # type: ignore[assignment]  # seconds, may be fractional
        if (path is None) == (database is None):
            raise ValueError(
                "chanlite: CONFIG needs exactly one of 'path' (a database file for the "
                "layer) or 'database' (a Django database alias)"
            )
        if path is not None and str(path) == "":
            raise ValueError("chanlite: 'path' must be a database file or ':memory:', not ''")
        self.path = None if path is None else str(path)
        memory_uri = None if self.path is None else _memory_uri(self.path)
        #: Test mode: the process's in-memory database (path=":memory:").
        self._memory = None if memory_uri is None else _MemoryDatabase.named(memory_uri)
        self.database = database
        self.group_expiry = group_expiry
        self.capacity_globs: list[tuple[str, int]] = [
            (glob_for_pattern(k), int(v)) for k, v in (channel_capacity or {}).items()
        ]
        # The same patterns, as channels' get_capacity() reads them (first match wins).
        self.capacity_patterns: list[tuple[re.Pattern[str], int]] = [
            (re.compile(fnmatch.translate(glob)), n) for glob, n in self.capacity_globs
        ]
        self.channel_capacity = dict(self.capacity_patterns)
        self.busy_timeout = busy_timeout
        if not lock_timeout >= 0:
            raise ValueError(f"chanlite: 'lock_timeout' must be >= 0 seconds, not {lock_timeout!r}")
        self.lock_timeout = lock_timeout
        self.threads = threads
        if wake not in ("auto", "polling"):
            raise ValueError(f"chanlite: 'wake' must be 'auto' or 'polling', not {wake!r}")
        self.wake = wake
        #: How receivers wait: "inotify" or "polling"; None until one has waited.
        self.wake_method: str | None = None
        self._bell: _Bell | None = None
        self._bell_path: str | None = None  # "" when the bell cannot be watched
        self._bell_unavailable = ""  # why not
        self.crypter = self._make_crypter(symmetric_encryption_keys)
        self.client_prefix = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tls = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._epoch = 0  # close() counts up: what was opening before it is stale
        #: Per thread (event loop) ident: its loop connection (see _try_on_loop).
        self._loop_conns: dict[int, _LoopConnection] = {}
        #: Calls made on the event loop's thread (False: every call in the pool).
        self.loop_calls = loop_calls
        #: Loop-thread calls that found the database locked and went to the pool.
        self.loop_fallbacks = 0
        self._configured = False
        self._clock: float | None = None
        self._clock_generation = 0
        self._resolved_path: str | None = None
        if self._memory is not None:
            self._memory.layers.add(self)
        #: The process this layer's state belongs to (see _check_process).
        self._pid = os.getpid()
        self._gate = _ForkGate()
        self._gate_shut = False  # this layer's gate was shut for a fork
        _LAYERS.add(self)

    # ---- encoding ----

    @staticmethod
    def _make_crypter(keys: Iterable[str | bytes] | None) -> Any:
        if not keys:
            return None
        if isinstance(keys, str | bytes):
            raise ValueError("chanlite: symmetric_encryption_keys must be a list of keys")
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError as e:
            raise ValueError(
                "chanlite: symmetric_encryption_keys needs cryptography: "
                "pip install 'chanlite[encryption]'"
            ) from e
        fernets = []
        for key in keys:
            raw = key.encode("utf8") if isinstance(key, str) else key
            # As channels_redis does: any string, stretched to a Fernet key.
            fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
        return MultiFernet(fernets)

    def serialize(self, message: dict[str, Any]) -> bytes:
        """msgpack (bytes stay bytes), encrypted when keys are configured."""
        data: bytes = msgpack.packb(message, use_bin_type=True)
        if self.crypter is not None:
            data = self.crypter.encrypt(data)
        return data

    def deserialize(self, data: bytes | str) -> dict[str, Any]:
        """The message of a stored body. A TEXT body (sent by another client
        through SQL) is read as JSON when not encrypted."""
        if isinstance(data, str):
            if self.crypter is not None:
                data = data.encode()
            else:
                message = json.loads(data)
                if not isinstance(message, dict):
                    raise TypeError("chanlite: a TEXT message must be a JSON object")
                return message
        if self.crypter is not None:
            data = self.crypter.decrypt(data)
        message = msgpack.unpackb(data, raw=False)
        if not isinstance(message, dict):
            raise TypeError("chanlite: a stored message is not a map")
        return message

    def _check_message(self, message: Any) -> None:
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        if "__asgi_channel__" in message:
            raise ValueError("message must not contain '__asgi_channel__'")

    # ---- connections ----

    def database_path(self) -> str:
        """The database file (for ``database``, the Django alias's NAME)."""
        if self._resolved_path is None:
            if self._memory is not None:
                self._resolved_path = self._memory.uri
            elif self.path is not None:
                self._resolved_path = self.path
            else:
                from django.db import connections

                assert self.database is not None
                settings = connections[self.database].settings_dict
                if "sqlite" not in settings["ENGINE"] and not settings["ENGINE"].startswith(
                    "chanlite"
                ):
                    raise ValueError(
                        f"chanlite: database {self.database!r} is not SQLite ({settings['ENGINE']})"
                    )
                name = str(settings["NAME"])
                if name in ("", ":memory:") or "mode=memory" in name:
                    raise ValueError(
                        f"chanlite: database {self.database!r} is in memory: the layer needs "
                        "a database file (for tests, set DATABASES[...]['TEST']['NAME'])"
                    )
                self._resolved_path = name
        return self._resolved_path

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened and configured on first use."""
        if self._memory is not None:
            return self._memory_connection(self._memory)
        # Read once: close() (and a fork) replace self._tls meanwhile, and a
        # connection found in the old one has its clock noted there.
        tls = self._tls
        conn: sqlite3.Connection | None = getattr(tls, "conn", None)
        if conn is None:
            conn = chanlite.connect(
                self.database_path(),
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
                self._use_wal(conn)
                _tune(conn)
            except BaseException:
                conn.close()
                raise
            tls.conn = conn
            tls.clock_generation = -1
            with self._lock:
                self._connections.append(conn)
        self._configure(conn)  # again after a failure (a locked database)
        if tls.clock_generation != self._clock_generation:
            tls.clock_generation = self._clock_generation
            conn.execute("SELECT chanlite_clock(?)", (self._clock,))
        return conn

    def _memory_connection(self, memory: _MemoryDatabase) -> sqlite3.Connection:
        """The in-memory database's one connection, with this layer's settings
        and clock (other layers on it may pin another clock)."""
        conn = memory.connection()
        self._configure(conn)
        if memory.clock != self._clock:
            conn.execute("SELECT chanlite_clock(?)", (self._clock,))
            memory.clock = self._clock
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """WAL mode. Switching to it needs an exclusive lock that SQLite does
        not wait for when other connections are opening the file too: retry
        for up to the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _configure(self, conn: sqlite3.Connection) -> None:
        """Store this layer's settings in the database, once."""
        if self._configured:
            return
        for key, value in (
            ("expiry", self.expiry),
            ("group_expiry", self.group_expiry),
            ("capacity", self.capacity),
        ):
            conn.execute("SELECT chanlite_config(?, ?)", (key, value))
        for glob, n in self.capacity_globs:
            conn.execute("SELECT chanlite_capacity(?, ?)", (glob, n))
        self._configured = True  # only now: a locked database leaves it to the next call

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        self._check_process()
        call = functools.partial(self._gated, fn, *args)
        if self._memory is not None:
            return loop.run_in_executor(self._memory.executor, call)
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="chanlite"
                )
            executor = self._executor
        return loop.run_in_executor(executor, call)

    def _gated(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) inside the fork gate (in the pool's thread)."""
        gate = self._gate
        gate.enter()
        try:
            return fn(*args)
        finally:
            gate.leave()

    async def _call(self, fn: Callable[..., T], *args: Any, what: str = "") -> T:
        """fn(*args) in the pool. A database locked past the busy timeout is
        retried with a jittered backoff for up to lock_timeout seconds in
        all, then DatabaseLocked. A locked call changed nothing (chanlite
        undoes a failed call), so a retry cannot send twice."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                result = await self._submit(fn, *args)
            except sqlite3.OperationalError as e:
                if not _is_locked(e):
                    raise
                attempt += 1
                pause = _pause_or_give_up(what or fn.__name__, e, attempt, started, self)
                await asyncio.sleep(pause)
                continue
            if attempt:
                logger.info("chanlite: %s succeeded after %d retries", what or fn.__name__, attempt)
            return result

    def _sql(self, sql: str, *params: Any) -> Any:
        """One chanlite call in this thread; its single value."""
        return self._sql_on(self._connection(), sql, *params)

    def _sql_on(self, conn: sqlite3.Connection, sql: str, *params: Any) -> Any:
        try:
            return conn.execute(sql, params).fetchone()[0]
        except sqlite3.Error as e:
            raise self._translate(e, params) from e

    @staticmethod
    def _translate(error: sqlite3.Error, params: tuple[Any, ...]) -> Exception:
        text = str(error)
        if text.startswith("chanlite: channel full"):
            return ChannelFull(text.partition("channel full: ")[2] or params[0])
        if text.startswith(("chanlite: invalid channel name", "chanlite: invalid group name")):
            return TypeError(text)
        return error

    def _sync_recv_batch(self, queue: str, want: int) -> list[_Row]:
        return self._recv_batch_on(self._connection(), queue, want)

    def _recv_batch_on(self, conn: sqlite3.Connection, queue: str, want: int) -> list[_Row]:
        try:
            return conn.execute(
                "SELECT channel, message, expires_at FROM channel_recv_batch(?, ?)",
                (queue, want),
            ).fetchall()
        except sqlite3.Error as e:
            raise self._translate(e, (queue,)) from e

    # ---- calls on the event loop's thread ----

    def _try_on_loop(self, fn: Callable[..., T], *args: Any) -> T | _OnPool:
        """fn(conn, *args) right here, on the event loop's thread, on this
        thread's loop connection; or _ON_POOL when that connection is not
        open yet or the database is locked, for the caller to go through the
        pool instead.

        Why: a hop to the pool and back costs more than the call (a send or a
        pop is tens of microseconds in SQLite); at low rates the hops were
        most of the latency. Blocking the loop is still ruled out: this
        connection's busy timeout is 0, so a call that would wait for a lock
        fails at once with SQLITE_BUSY instead, having done nothing (chanlite
        undoes a failed call), and the pool retries it, waiting there.
        What still runs here is SQLite's auto-checkpoint, when a commit finds
        the WAL past 1,000 pages: a few milliseconds of fsync every few
        hundred commits. (Moving it to the pool with wal_autocheckpoint=0
        was tried: checkpoints racing the loop's writes often failed to let
        the WAL start over, and FULL ones stalled writers for seconds.)"""
        self._check_process()
        gate = self._gate
        gate.enter()
        try:
            loop_conn = self._loop_connection()
            if loop_conn is None:
                return _ON_POOL
            return fn(loop_conn.conn, *args)
        except sqlite3.OperationalError as e:
            if not _is_locked(e):
                raise
            self.loop_fallbacks += 1
            return _ON_POOL
        finally:
            gate.leave()

    def _loop_connection(self) -> _LoopConnection | None:
        """This thread's loop connection, or None while it is being opened
        (in the pool: opening may wait for locks) or where there is none."""
        if self._memory is not None or not self.loop_calls:
            return None
        ident = threading.get_ident()
        loop_conn = self._loop_conns.get(ident, _OPENING)
        if loop_conn is _OPENING:
            if ident not in self._loop_conns:
                with self._lock:
                    self._loop_conns[ident] = _OPENING
                opening = self._submit(self._open_loop_connection)
                opening.add_done_callback(
                    functools.partial(self._loop_connection_opened, ident, self._epoch)
                )
            return None
        if loop_conn.conn is None:
            return None  # not possible on this database
        if loop_conn.clock_generation != self._clock_generation:
            loop_conn.conn.execute("SELECT chanlite_clock(?)", (self._clock,))
            loop_conn.clock_generation = self._clock_generation
        return loop_conn

    def _open_loop_connection(self) -> sqlite3.Connection | None:
        """(In the pool.) A connection with busy timeout 0, for a loop's
        thread; None unless the database is in WAL mode (where readers and
        the writer never block each other, so calls rarely fall back)."""
        pool_conn = self._connection()  # WAL set and settings stored, waiting if need be
        if pool_conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return None
        conn = chanlite.connect(
            self.database_path(), timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA busy_timeout=0")
            _tune(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._connections.append(conn)
        return conn

    def _loop_connection_opened(
        self, ident: int, epoch: int, opening: asyncio.Future[sqlite3.Connection | None]
    ) -> None:
        with self._lock:
            if epoch != self._epoch or self._loop_conns.get(ident) is not _OPENING:
                return  # the layer was closed meanwhile: close() closes it
            if opening.cancelled() or opening.exception() is not None:
                del self._loop_conns[ident]  # try again on a later call
                return
            self._loop_conns[ident] = _LoopConnection(opening.result())

    def _now(self) -> float:
        """Now on the chanlite clock: the pinned one (set_clock), else the real one."""
        clock = self._clock
        return time.time() if clock is None else clock

    # ---- waking receivers ----

    def _sync_bell_path(self) -> tuple[str, str]:
        """(the bell's path, "") or ("", why it cannot be watched)."""
        if self.wake == "polling":
            return "", "configured with wake='polling'"
        why = _inotify.available()
        if why is not None:
            return "", why
        try:
            path = self._connection().execute("SELECT chanlite_bell_path()").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "no such function" in str(e):
                return "", "the extension has no chanlite_bell_path()"
            raise
        if not path:
            return "", "the database has no bell (chanlite_bell_path() is NULL)"
        return str(path), ""

    async def _arm(self) -> _Bell | None:
        """The bell, watched, for a receiver about to look; None to poll (or,
        in memory, to wait for a send of this process)."""
        if self._memory is not None and self.wake != "polling":
            with self._lock:
                self._use("memory", "the database is in this process's memory")
            return None
        if self._bell_path is None:  # once (concurrent first looks agree)
            path, why = await self._call(self._sync_bell_path, what="finding the bell")
            with self._lock:
                if self._bell_path is None:
                    self._bell_path, self._bell_unavailable = path, why
        with self._lock:
            bell = self._bell
            if bell is not None and bell.current():
                return bell
            if bell is not None:
                bell.retire()  # inherited through fork
            self._bell = None
            if self._bell_path:
                try:
                    self._bell = _Bell(self._bell_path)
                except OSError as e:
                    self._bell_path, self._bell_unavailable = "", f"inotify failed: {e}"
            if self._bell is None:
                self._use("polling", self._bell_unavailable)
            else:
                self._use("inotify", f"watching {self._bell_path}")
            return self._bell

    def _use(self, method: str, why: str) -> None:
        """Note how receivers wait, and say so once (lock held)."""
        if self.wake_method == method:
            return
        if self.wake_method is None:
            logger.info("chanlite: receivers wake by %s (%s)", method, why)
        else:
            logger.warning("chanlite: receivers now wake by %s (%s)", method, why)
        self.wake_method = method

    def _listen(self, bell: _Bell, loop: asyncio.AbstractEventLoop) -> bool:
        """Have loop read the bell while a receiver of it waits (lock held);
        False if this loop cannot watch a descriptor."""
        try:
            bell.listen(loop, self._on_bell)
        except (NotImplementedError, OSError, RuntimeError, ValueError) as e:
            logger.warning("chanlite: %r cannot watch the bell (%s): polling", loop, e)
            return False
        return True

    def _on_bell(self, bell: _Bell) -> None:
        """The bell rang (add_reader callback, in any loop that listens)."""
        with self._lock:
            self._drain(bell)

    def _drain(self, bell: _Bell) -> None:
        """Read the bell's pending rings; if there were any, every receiver
        of this layer, in any loop, looks again (lock held). Whoever drains
        wakes everybody, so that a ring read here is never lost to a receiver
        waiting elsewhere."""
        try:
            rang, lost = bell.drain()
        except OSError as e:
            logger.warning("chanlite: reading the bell failed (%s)", e)
            rang, lost = True, True
        if lost and bell.current():
            # The bell file went away: watch the new one, or poll from now on.
            # Either way everybody looks again, in case a ring fell in between.
            rang = True
            if not bell.rewatch():
                bell.retire()
                if self._bell is bell:
                    self._bell = None
                self._bell_path, self._bell_unavailable = "", "the bell went away"
                self._use("polling", self._bell_unavailable)
        if rang:
            for queue in self._queues.values():
                queue._kick()

    def set_clock(self, now: float | None) -> None:
        """Pin this layer's "now" (Unix seconds) on all its connections, or
        return to the real clock with None: chanlite_clock(), for tests of
        expiry and for hosts that replicate statements."""
        self._clock = now
        self._clock_generation += 1
        self._kick_queue(None)  # what has expired may differ: look again

    # ---- the channel layer API ----

    def get_capacity(self, channel: str) -> int:
        """The capacity of a channel: the first matching channel_capacity
        pattern's, else the default (what chanlite_capacity() decides in SQL)."""
        for pattern, capacity in self.capacity_patterns:
            if pattern.match(channel):
                return capacity
        return int(self.capacity)

    def _buffer_size(self, channel: str) -> int:
        return max(1, int(self.get_capacity(channel)))

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message onto a channel; ChannelFull when it is at capacity."""
        self._check_message(message)
        self.require_valid_channel_name(channel)
        data = self.serialize(message)
        sent = self._try_on_loop(self._sql_on, "SELECT channel_send(?, ?)", channel, data)
        if sent is _ON_POOL:
            await self._call(
                self._sql, "SELECT channel_send(?, ?)", channel, data, what=f"send to {channel!r}"
            )
        self._sent(self.non_local_name(channel))

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on a channel, waiting for one. Cancelling it at any
        point loses no message."""
        self._check_process()
        self.require_valid_channel_name(channel)
        if "!" in channel:
            queue_name = self.non_local_name(channel)
            if channel.endswith("!"):
                raise TypeError(
                    "chanlite: receive() needs a full process-specific channel name "
                    "(prefix!local), as new_channel() returns"
                )
            if not queue_name.endswith(self.client_prefix + "!"):
                raise AssertionError("Wrong client prefix")  # as channels_redis
        else:
            queue_name = channel
        with self._lock:
            queue = self._queues.get(queue_name)
            if queue is None:
                queue = self._queues[queue_name] = _Queue(self, queue_name)
        data = await queue.get(channel)
        return self.deserialize(data)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name that this layer receives."""
        self._check_process()
        return f"{prefix}.{self.client_prefix}!{secrets.token_hex(12)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._call(
            self._sql, "SELECT group_add(?, ?)", group, channel, what=f"group_add to {group!r}"
        )

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._call(
            self._sql,
            "SELECT group_discard(?, ?)",
            group,
            channel,
            what=f"group_discard from {group!r}",
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> int:  # type: ignore[override]
        """Send to every member; full members are skipped. Returns how many
        members it was delivered to (Channels' API returns None: callers may
        ignore it)."""
        self._check_message(message)
        self.require_valid_group_name(group)
        data = self.serialize(message)
        delivered: int = await self._call(
            self._sql, "SELECT group_send(?, ?)", group, data, what=f"group_send to {group!r}"
        )
        if delivered:
            self._sent(None)
        return delivered

    async def flush(self) -> None:
        """Empty every channel and group (of the whole database), and this
        process's buffers."""
        await self._call(self._sql, "SELECT channel_flush()", what="flush")
        with self._lock:
            for queue in self._queues.values():
                queue.buffers.clear()

    async def close(self) -> None:
        """Stop receiving and close the connections. The layer opens them
        again if used afterwards."""
        self._check_process()
        with self._lock:
            queues = list(self._queues.values())
            for queue in queues:
                for waiting in queue.waiters.values():
                    for loop, fut in waiting:
                        _call_in(loop, _cancel, fut)
                queue.waiters.clear()  # so that no receiver looks again for them
                queue._kick()
            executor, self._executor = self._executor, None
            self._loop_conns = {}
            self._epoch += 1
            self._configured = False
            self._retire_bell()
        here = asyncio.get_running_loop()
        tasks = [q.task for q in queues if q.task is not None and q.task_loop is here]
        if tasks:
            await asyncio.wait(tasks, timeout=self.busy_timeout + 1)
        with self._lock:
            self._retire_bell()  # one that a receiver armed meanwhile
        self._tls = threading.local()
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        # Only now: a connection that a call in the pool was still opening
        # (a loop's, say) is in the list by the time the pool has stopped.
        with self._lock:
            connections, self._connections = self._connections, []
        await asyncio.to_thread(self._close_connections, connections)

    def _close_connections(self, connections: list[sqlite3.Connection]) -> None:
        """Close connections that no call can be using: another event loop's
        thread may be inside a call on its loop connection, so wait at the
        gate for the calls in flight (a call waits for a lock at most the
        busy timeout)."""
        gate = self._gate
        if not gate.shut(self.busy_timeout + 1):
            logger.warning("chanlite: close(): a call was still running; closing anyway")
        try:
            for conn in connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        finally:
            gate.open()

    # ---- fork() ----

    def _check_process(self) -> None:
        """Start afresh if this is a child that the fork handlers missed (a
        fork made without Python's knowledge)."""
        if self._pid != os.getpid():
            self._after_fork_in_child()

    def _before_fork(self) -> None:
        """Let no connection cross the fork: wait for the calls inside SQLite
        to end (a call waits for a lock at most the busy timeout), then close
        every connection. The parent opens new ones on its next call."""
        if self._pid != os.getpid():
            return  # a child that has not used this layer yet: nothing of its own
        self._gate_shut = True
        if not self._gate.shut(self.busy_timeout + 1):
            logger.warning(
                "chanlite: fork() while a call was still inside SQLite after %.1f s: "
                "the child leaves this process's connections alone and opens its own",
                self.busy_timeout + 1,
            )
            return
        if self._memory is not None:
            return  # one in-memory database per process: the parent keeps it
        with self._lock:
            connections, self._connections = self._connections, []
            self._tls = threading.local()
            self._loop_conns = {}
            self._epoch += 1  # a loop connection being opened is stale
        self._close_connections(connections)  # the gate is shut already: no wait
        for close in BEFORE_FORK_CLOSE:
            close(self)

    def _after_fork_in_parent(self) -> None:
        if self._gate_shut:
            self._gate_shut = False
            self._gate.open()

    def _after_fork_in_child(self) -> None:
        """Everything that belongs to the parent goes: its connections (never
        used here, never closed), its pool's threads (they do not exist
        here), its bell watch (the parent's inotify instance), its buffers
        and waiting receivers, and its process-specific prefix: the child
        receives only what is sent to its own new_channel() names."""
        self._pid = os.getpid()
        self._lock = _reinit_lock(self._lock)
        self._gate = _ForkGate()
        self._gate_shut = False
        _INHERITED.extend(self._connections)
        _INHERITED.extend(c.conn for c in self._loop_conns.values() if c.conn is not None)
        self._connections = []
        self._loop_conns = {}
        self._tls = threading.local()
        self._epoch += 1
        self._executor = None  # its threads are the parent's; never shut it down here
        for queue in self._queues.values():
            queue.task = None  # a receiver of the parent's that runs on here stops
            queue.waiters.clear()
            queue.buffers.clear()  # the parent's to deliver, not ours
        self._queues = {}
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.retire()  # closes this process's copy of the descriptor only
        self.client_prefix = secrets.token_hex(8)

    # ---- helpers ----

    def _retire_bell(self) -> None:
        """Stop watching the bell (lock held): its descriptor closes now, or
        once the last loop listening to it stops."""
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.retire()

    def _sent(self, name: str | None) -> None:
        """Wake this process's receivers of a queue (all, for None) after a
        send: of this layer, or in memory, of every layer on the database."""
        if self._memory is not None:
            self._memory.kick(name)
        else:
            self._kick_queue(name)

    def _kick_queue(self, name: str | None) -> None:
        """Make this process's receivers of a queue (all, for None) look now."""
        with self._lock:
            if name is None:
                for queue in self._queues.values():
                    queue._kick()
            elif (named := self._queues.get(name)) is not None:
                named._kick()

    def _forget_if_idle(self, queue: _Queue) -> None:
        """Drop a normal channel's queue once idle (lock held), so that
        receiving on many channel names does not grow memory. This layer's
        own ``prefix!`` queue (one) is kept: what it knows (that it is
        empty, see _Queue.emptied) saves the next receive() a look."""
        if queue.idle() and not queue.local and self._queues.get(queue.name) is queue:
            del self._queues[queue.name]

    def __repr__(self) -> str:
        where = f"path={self.path!r}" if self.path is not None else f"database={self.database!r}"
        return f"<SQLiteChannelLayer {where}>"


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
