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
* :mod:`chanlite.receiver`: per queue this process receives from, what it
  has popped (bounded buffers), who waits for it, and the receiver task.
* :mod:`chanlite.fork`: how a layer survives ``fork()``.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from chanlite import fork
from chanlite.fork import reinit_lock
from chanlite.local import DatabaseLocked, LocalTransport, _memory_uri
from chanlite.receiver import _call_in, _cancel, _Queue
from chanlite.transport import Transport

__all__ = ["ChannelFull", "DatabaseLocked", "SQLiteChannelLayer", "glob_for_pattern"]


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
        cluster: Iterable[str] | None = None,
        cluster_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(capacity=capacity)
        self.expiry: float = expiry  # type: ignore[assignment]  # seconds, may be fractional
        if [path, database, cluster].count(None) != 2:
            raise ValueError(
                "chanlite: CONFIG needs exactly one of 'path' (a database file for the "
                "layer), 'database' (a Django database alias) or 'cluster' (dqlite nodes)"
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
        self.transport: Transport
        if cluster is not None:  # docs/cluster.md
            from chanlite.cluster import ClusterTransport

            self.transport = ClusterTransport(self, cluster, **(cluster_options or {}))
        else:
            self.transport = LocalTransport(self, self._memory_uri)
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
    def receive_lock(self) -> threading.Lock:
        """Guards the receivers, and the transport's waking state and
        connections (see chanlite.transport.Host)."""
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
                queue.recount_hungry()

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
                queue.hungry.clear()
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
