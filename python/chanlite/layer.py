"""The Django Channels channel layer on chanlite.

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chanlite.layer.SQLiteChannelLayer",
            "CONFIG": {"path": BASE_DIR / "channels.sqlite3"},   # or {"database": "default"}
        },
    }

This module is the layer's logic: its configuration, message serialization
and encryption, name checks, and the Channels contract (send, receive,
groups, flush, close). The rest has a module each:

* :mod:`chanlite.transport`: the interface to where its SQL runs and how its
  receivers are woken, and :mod:`chanlite.local`, the transport on a database
  file (connections, the thread pool and the event loop's own connection,
  lock retries, the bell).
* :mod:`chanlite.fork`: how a layer survives ``fork()``.

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
its own). A receiver that finds its queue empty waits for the transport's
watch (see :mod:`chanlite.transport`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from chanlite import fork
from chanlite.fork import reinit_lock
from chanlite.local import DatabaseLocked, LocalTransport, _memory_uri
from chanlite.transport import Row, Transport, Watch

__all__ = ["ChannelFull", "DatabaseLocked", "SQLiteChannelLayer", "glob_for_pattern"]

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


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


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
        # Counts kicks (a send of this process, a new receive(), the
        # transport's watch: the bell): a receiver notes it before it looks
        # and waits only if it has not moved.
        self.wakes = 0
        # (watch, wakes before the look) of the last look that left the queue
        # empty: until a notice or a kick moves `wakes` on, another look would
        # find nothing (every commit reaches the watch, which is armed all
        # along, even while nobody listens to it: see chanlite.transport).
        self.emptied: tuple[Watch, int] | None = None
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
        transport = self.layer.transport
        idle = _Backoff()
        locked = 0  # attempts in a row that failed and may be retried (a locked database)
        try:
            while True:
                with lock:
                    if self._demand() == 0 or self.task is not me:
                        if self.task is me:
                            self.task = None
                        return
                try:
                    watch = await transport.arm()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if await self._pause_before_retry(exc, locked + 1):
                        locked += 1
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
                    # now, so a commit after this leaves a notice behind, and
                    # a notice or kick from now on moves `wakes` past `seen`.
                    if watch is not None:
                        watch.collect()
                    seen = self.wakes
                    # The last look emptied the queue and nothing has rung or
                    # kicked since it began: it would find nothing, so wait.
                    skip_look = watch is not None and self.emptied == (watch, seen)
                try:
                    rows = [] if skip_look else await transport.pop(self.name, want, self._dispatch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if await self._pause_before_retry(exc, locked + 1):
                        locked += 1
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
                        self.emptied = (watch, seen) if watch is not None else None
                if rows:
                    self._dispatch(rows)
                    idle.reset()
                else:
                    await self.wait_for_messages(idle, watch, seen)
        finally:
            with lock:
                if self.task is me:
                    self.task = None
                self.layer._forget_if_idle(self)

    async def _pause_before_retry(self, error: Exception, attempt: int) -> bool:
        """After a failed arm or pop: wait before looking again and return
        True if the transport says error may pass (a database locked past
        the busy timeout); False if it is final. Receivers retry for as long
        as somebody waits: a receive() is a wait already, and cancelling it
        stops this."""
        what = f"receive from {self.name!r}"
        pause = self.layer.transport.pause_before_retry(error, attempt, what)
        if pause is None:
            return False
        await asyncio.sleep(pause)
        return True

    def _dispatch(self, rows: Iterable[Row]) -> None:
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

    async def wait_for_messages(self, idle: _Backoff, watch: Watch | None, seen: int) -> None:
        """Wait until a message may have arrived in this queue: until the
        queue's wake count moves past seen (noted before the look that found
        nothing), which the transport's watch (the bell), a send of this
        process to the queue, or a new receive() does. Without a watch, look
        again after a backoff (1 ms after activity, doubling to 50 ms while
        idle)."""
        loop = asyncio.get_running_loop()
        kick: asyncio.Future[None] = loop.create_future()
        listening = False
        with self.layer._lock:
            if self.wakes != seen or (watch is not None and not watch.current()):
                idle.reset()
                return  # rang or kicked since the look, or the layer closed
            self.kick_waiter = (loop, kick)
            if watch is not None:
                listening = watch.listen(loop)
            elif self.layer.transport.kicked_by_every_change:
                listening = True  # every send of the database kicks us (in memory)
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
                if listening and watch is not None:
                    watch.unlisten(loop)

    def idle(self) -> bool:
        """Nothing buffered, nobody waiting, no receiver (lock held)."""
        return not self.buffers and not self.waiters and self.task is None


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
    when they can do so without waiting for a lock (see
    ``chanlite.local.LocalTransport._try_on_loop``);
    False sends every call through the pool.
    ``wake``: ``"auto"`` (the default: receivers wait for the extension's bell
    with inotify where they can, else poll) or ``"polling"`` (always poll,
    with a backoff from 1 to 50 ms). Once a receiver has waited,
    ``wake_method`` says which is in use: ``"inotify"``, ``"polling"`` or
    ``"memory"``.

    Test mode: ``path=":memory:"`` (or a ``file:NAME?mode=memory`` URI) is an
    in-memory database shared by every layer of the process that names it,
    alive until the process exits (see :class:`chanlite.local._MemoryDatabase`).

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
        #: Test mode: the shared-cache URI of the in-memory database it names.
        self._memory_uri = None if self.path is None else _memory_uri(self.path)
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
        self.crypter = self._make_crypter(symmetric_encryption_keys)
        self.client_prefix = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        #: Calls made on the event loop's thread (False: every call in the pool).
        self.loop_calls = loop_calls
        self._clock: float | None = None
        self._resolved_path: str | None = None
        #: The process this layer's state belongs to (see check_process).
        self._pid = os.getpid()
        #: Where its SQL runs and how its receivers wake.
        self.transport: Transport = LocalTransport(self, self._memory_uri)
        fork.register(self)

    @property
    def wake_method(self) -> str | None:
        """How receivers wait: "inotify", "polling" or "memory"; None until
        one has waited."""
        return self.transport.wake_method

    @property
    def loop_fallbacks(self) -> int:
        """Calls on the event loop's thread that found the database locked
        and went to the pool."""
        return int(getattr(self.transport, "loop_fallbacks", 0))

    @property
    def lock(self) -> threading.Lock:
        """Guards the receivers and the transport's state (see
        chanlite.transport.Host)."""
        return self._lock

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
            if self.path is not None:
                self._resolved_path = self._memory_uri or self.path
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

    def _now(self) -> float:
        """Now on the chanlite clock: the pinned one (set_clock), else the real one."""
        clock = self._clock
        return time.time() if clock is None else clock

    def set_clock(self, now: float | None) -> None:
        """Pin this layer's "now" (Unix seconds) on all its connections, or
        return to the real clock with None: chanlite_clock(), for tests of
        expiry and for hosts that replicate statements."""
        self._clock = now
        self.transport.set_clock(now)
        self.kick(None)  # what has expired may differ: look again

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
        await self.transport.send(channel, data)
        self.transport.sent(self.non_local_name(channel))

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on a channel, waiting for one. Cancelling it at any
        point loses no message."""
        self.check_process()
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
        self.check_process()
        return f"{prefix}.{self.client_prefix}!{secrets.token_hex(12)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self.transport.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self.transport.group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> int:  # type: ignore[override]
        """Send to every member; full members are skipped. Returns how many
        members it was delivered to (Channels' API returns None: callers may
        ignore it)."""
        self._check_message(message)
        self.require_valid_group_name(group)
        data = self.serialize(message)
        delivered = await self.transport.group_send(group, data)
        if delivered:
            self.transport.sent(None)
        return delivered

    async def flush(self) -> None:
        """Empty every channel and group (of the whole database), and this
        process's buffers."""
        await self.transport.flush()
        with self._lock:
            for queue in self._queues.values():
                queue.buffers.clear()

    async def close(self) -> None:
        """Stop receiving and close the connections. The layer opens them
        again if used afterwards."""
        self.check_process()
        with self._lock:
            queues = list(self._queues.values())
            for queue in queues:
                for waiting in queue.waiters.values():
                    for loop, fut in waiting:
                        _call_in(loop, _cancel, fut)
                queue.waiters.clear()  # so that no receiver looks again for them
                queue._kick()
            self.transport.close_locked()
        here = asyncio.get_running_loop()
        tasks = [q.task for q in queues if q.task is not None and q.task_loop is here]
        if tasks:
            await asyncio.wait(tasks, timeout=self.transport.close_timeout)
        await self.transport.close()

    # ---- fork() (see chanlite.fork) ----

    def check_process(self) -> None:
        """Start afresh if this is a child that the fork handlers missed (a
        fork made without Python's knowledge)."""
        if self._pid != os.getpid():
            self._after_fork_in_child()

    def _before_fork(self) -> None:
        if self._pid != os.getpid():
            return  # a child that has not used this layer yet: nothing of its own
        self.transport.before_fork()

    def _after_fork_in_parent(self) -> None:
        self.transport.after_fork_in_parent()

    def _after_fork_in_child(self) -> None:
        """Everything that belongs to the parent goes: its connections, pool
        and bell watch (see the transport), its buffers and waiting
        receivers, and its process-specific prefix: the child receives only
        what is sent to its own new_channel() names."""
        self._pid = os.getpid()
        self._lock = reinit_lock(self._lock)
        self.transport.after_fork_in_child()
        for queue in self._queues.values():
            queue.task = None  # a receiver of the parent's that runs on here stops
            queue.waiters.clear()
            queue.buffers.clear()  # the parent's to deliver, not ours
        self._queues = {}
        self.client_prefix = secrets.token_hex(8)

    # ---- helpers ----

    def kick(self, queue: str | None) -> None:
        """Make this process's receivers of a queue (all, for None) look now."""
        with self._lock:
            self.kick_locked(queue)

    def kick_locked(self, queue: str | None) -> None:
        """kick(), with the lock held."""
        if queue is None:
            for each in self._queues.values():
                each._kick()
        elif (named := self._queues.get(queue)) is not None:
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
