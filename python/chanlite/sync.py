"""Layer calls for synchronous code: Django views, signals, Celery tasks.

    import chanlite.sync

    chanlite.sync.group_send("chat", {"type": "chat.message", "text": "hi"})
    chanlite.sync.send("worker", {"type": "job.start", "id": 7})
    chanlite.sync.group_add("chat", channel_name)
    chanlite.sync.group_discard("chat", channel_name)

Each takes ``layer=``, a ``CHANNEL_LAYERS`` alias (``"default"``) or a
:class:`~chanlite.layer.SQLiteChannelLayer`, and is one SQL call on the
calling thread: no event loop, no thread hop. ``async_to_sync(layer.group_send)``
does the same work but, from a thread with no event loop, starts a thread and
an event loop per call (asgiref's way) and hands the statement to the layer's
thread pool and back: bench/results/sync.md has the difference. The semantics
and errors are the async methods': ChannelFull from a full channel, TypeError
for a bad name or message, :class:`~chanlite.layer.DatabaseLocked` after
``lock_timeout`` seconds of a database locked past the busy timeout (retried
meanwhile with a jittered backoff), and this process's receivers are woken at
once (other processes by the extension's bell).

Which to use:

* ``chanlite.sync`` runs on the layer's own connections (its ``path``, or the
  file of its ``database``), outside any transaction of yours: the message is
  committed when the call returns, whatever your code does next.
* :mod:`chanlite.django`'s ``send``/``group_send`` run on Django's connection,
  inside the current ``transaction.atomic()``: the transactional outbox, for a
  message that must commit or roll back with the app's data (the layer must
  be configured with ``"database"``). Outside a transaction they commit at
  once too.

With ``"database"``, the layer's file is Django's: inside ``transaction.atomic()``
on it, ``chanlite.sync`` raises at once rather than wait for the write lock
that the transaction itself holds (use ``chanlite.django``, or
``transaction.on_commit``).

Connections. WSGI servers (and ``runserver``) run each request on a thread of
its own, often a new one, so a connection per thread would pile up. Calls
borrow a connection from a pool per layer and give it back; at most
``MAX_IDLE`` idle ones are kept and any beyond are closed, so the number
open is the number of calls in flight plus at most ``MAX_IDLE``.

Fork. SQLite forbids using, or even closing, a connection opened before
``fork()`` in the child (closing releases the child's own POSIX locks on the
file). Calls pass the layer's fork gate, so just before a fork, once the
calls in flight have ended, the pools' connections are closed (see
``chanlite.local.LocalTransport.before_fork``). In a child, the pools start afresh;
a connection that still crossed the fork (a fork Python did not see) is
never touched again: kept referenced for good (:data:`_inherited`), so no
finalizer closes it, not even at interpreter exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER

from chanlite.layer import SQLiteChannelLayer
from chanlite.local import BEFORE_FORK_CLOSE, LocalTransport, is_locked, pause_or_give_up

__all__ = [
    "MAX_IDLE",
    "PoolStats",
    "close",
    "group_add",
    "group_discard",
    "group_send",
    "pool_stats",
    "send",
]

logger = logging.getLogger("chanlite")

#: Idle connections a layer's pool keeps. Above the concurrency of a typical
#: WSGI worker (gthread's threads, runserver's bursts), so steady traffic
#: reuses connections; each idle one costs a file descriptor and SQLite's
#: page cache.
MAX_IDLE = 8

LayerRef = SQLiteChannelLayer | str


class _Pooled:
    """A pool connection and what it was set up with."""

    __slots__ = ("clock_generation", "conn", "epoch", "pid")

    def __init__(self, conn: sqlite3.Connection, epoch: int) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.epoch = epoch  # the layer's: its close() counts up, and we follow
        self.clock_generation = -1


@dataclass(frozen=True)
class PoolStats:
    """A layer's pool in this process: connections idle and in use now, and
    opened and closed since the process started (or forked)."""

    idle: int
    in_use: int
    opened: int
    closed: int


class _Pool:
    """One layer's connections for synchronous callers, in one process."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.lock = threading.Lock()
        #: Taken around each call: see _once.
        self.turn = threading.Lock()
        self.idle: list[_Pooled] = []
        self.in_use = 0
        self.opened = 0
        self.closed = 0

    def checkout(self, transport: LocalTransport) -> _Pooled:
        stale: list[_Pooled] = []
        pooled: _Pooled | None = None
        with self.lock:
            while self.idle:
                candidate = self.idle.pop()  # the most recently used: its cache is warm
                if candidate.epoch == transport.epoch:
                    pooled = candidate
                    break
                stale.append(candidate)
            self.in_use += 1
        self._close(stale)
        try:
            if pooled is None:
                pooled = self._open(transport)
            pooled.clock_generation = transport.prepare(pooled.conn, pooled.clock_generation)
        except BaseException:
            self.checkin(transport, pooled, reuse=False)
            raise
        return pooled

    def checkin(self, transport: LocalTransport, pooled: _Pooled | None, reuse: bool) -> None:
        if pooled is not None and pooled.pid != os.getpid():
            _inherit(pooled.conn)  # checked out before a fork, in the thread that forked
            return
        with self.lock:
            self.in_use -= 1
            if pooled is None:
                return
            if reuse and pooled.epoch == transport.epoch and len(self.idle) < self.max_idle:
                self.idle.append(pooled)
                return
        self._close([pooled])

    def _open(self, transport: LocalTransport) -> _Pooled:
        """A connection as the layer's own (a thread checks it out, another may next)."""
        conn = transport.open_connection()
        with _state_lock:
            _opened.add(conn)
        with self.lock:
            self.opened += 1
        return _Pooled(conn, transport.epoch)

    def _close(self, pooled: list[_Pooled]) -> None:
        for p in pooled:
            with _state_lock:
                _opened.discard(p.conn)
            with contextlib.suppress(sqlite3.Error):
                p.conn.close()
        if pooled:
            with self.lock:
                self.closed += len(pooled)

    def close_idle(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        self._close(idle)


# ---- per-process state; started afresh in a forked child ----

# Re-entrant: a pool's finalizer (a layer collected by the garbage collector)
# takes it, and the collector can run wherever this thread allocates, such as
# inside _pool() while it holds the lock (inserting into _pools): a plain Lock
# deadlocked there.
_state_lock = threading.RLock()
_pid = os.getpid()
_pools: weakref.WeakKeyDictionary[SQLiteChannelLayer, _Pool] = weakref.WeakKeyDictionary()
#: Every connection the pools of this process have open, so that after a fork
#: the child can find and keep them all (also one that a thread, gone in the
#: child, had checked out).
_opened: set[sqlite3.Connection] = set()
#: Connections inherited through fork(): never used nor closed here.
_inherited: list[sqlite3.Connection] = []


def _inherit(conn: sqlite3.Connection) -> None:
    """Keep a connection inherited through fork() from ever being closed in
    this process. The list holds it while the interpreter runs; at exit,
    CPython clears module globals, which would free it and run sqlite3_close,
    so it also gets a reference that nothing owns."""
    _inherited.append(conn)
    if sys.implementation.name == "cpython":
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _after_fork() -> None:
    """In a forked child (os.register_at_fork, or the first call that sees
    a new pid after a fork that bypassed it): drop the parent's pools."""
    global _state_lock, _pid, _pools, _opened
    if _pid == os.getpid():
        return
    for conn in _opened:
        _inherit(conn)
    for pool in _pools.values():
        pool.idle = []  # the parent's: its finalizer must not close them here
    # Another thread of the parent may have held this lock when it forked.
    _state_lock = threading.RLock()
    _opened = set()
    _pools = weakref.WeakKeyDictionary()
    _pid = os.getpid()


def _close_for_fork(layer: SQLiteChannelLayer) -> None:
    """Just before a fork, with the layer's gate shut (no call in flight):
    close the pool's connections, so that none crosses the fork."""
    pool = _pools.get(layer)
    if pool is not None:
        pool.close_idle()


BEFORE_FORK_CLOSE.append(_close_for_fork)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _pool(layer: SQLiteChannelLayer) -> _Pool:
    if _pid != os.getpid():
        _after_fork()
    pool = _pools.get(layer)
    if pool is None:
        with _state_lock:
            pool = _pools.get(layer)
            if pool is None:
                pool = _pools[layer] = _Pool(MAX_IDLE)
                # A layer that is garbage collected takes its pool's
                # connections with it (else they stay open for good).
                weakref.finalize(layer, pool.close_idle)
    return pool


# ---- calls ----


def _resolve(layer: LayerRef) -> SQLiteChannelLayer:
    if isinstance(layer, SQLiteChannelLayer):
        return layer
    if not isinstance(layer, str):
        raise TypeError(
            f"chanlite: layer must be a CHANNEL_LAYERS alias or a SQLiteChannelLayer, "
            f"not {type(layer).__name__}"
        )
    from channels.layers import get_channel_layer
    from django.core.exceptions import ImproperlyConfigured

    instance = get_channel_layer(layer)
    if instance is None:
        raise ImproperlyConfigured(f"chanlite: no channel layer {layer!r} in CHANNEL_LAYERS")
    if not isinstance(instance, SQLiteChannelLayer):
        raise ImproperlyConfigured(
            f"chanlite: channel layer {layer!r} is {type(instance).__name__}, not "
            "chanlite.layer.SQLiteChannelLayer: use async_to_sync(layer.group_send) for it"
        )
    return instance


def _refuse_inside_atomic(layer: SQLiteChannelLayer, call: str) -> None:
    """A layer on a Django database shares its file, so inside this thread's
    transaction.atomic() on it, a call on another connection would wait for
    the write lock that the transaction holds (IMMEDIATE) until lock_timeout,
    or, made first, leave that transaction unable to write (SQLite fails a
    read transaction that another connection wrote under). Say what works."""
    if layer.database is None:
        return
    from django.db import connections

    if connections[layer.database].in_atomic_block:
        raise RuntimeError(
            f"chanlite: chanlite.sync.{call} inside transaction.atomic() on database "
            f"{layer.database!r}, the layer's own file, would wait for that transaction's "
            f"write lock: use chanlite.django.{call} (it commits with the transaction) or "
            f"transaction.on_commit(lambda: chanlite.sync.{call}(...))"
        )


def _transport(layer: SQLiteChannelLayer) -> LocalTransport:
    """The layer's transport, which must be on a database file (or in memory)."""
    transport = layer.transport
    if not isinstance(transport, LocalTransport):
        raise TypeError(
            f"chanlite: chanlite.sync needs a layer on a database file, not on "
            f"{type(transport).__name__}: use async_to_sync(layer.group_send) for it"
        )
    return transport


@contextlib.contextmanager
def _connection(transport: LocalTransport, pool: _Pool) -> Iterator[sqlite3.Connection]:
    pooled = pool.checkout(transport)
    reuse = False
    try:
        yield pooled.conn
        reuse = True
    except BaseException:
        # A failed chanlite call undoes itself; anything that left a
        # transaction open (an interrupt) makes the connection unfit.
        reuse = not pooled.conn.in_transaction
        raise
    finally:
        pool.checkin(transport, pooled, reuse)


def _once(layer: SQLiteChannelLayer, sql: str, params: tuple[Any, ...]) -> Any:
    transport = _transport(layer)
    if transport.in_memory:
        # Test mode: the in-memory database has one connection, used only by
        # its own thread.
        return transport.call_in_memory(sql, *params)
    pool = _pool(layer)
    # Inside the layer's fork gate, as its own calls: a fork() waits for the
    # call to end, then closes the pool's connections (_close_for_fork).
    gate = transport.gate
    gate.enter()
    try:
        return _once_on(layer, transport, pool, sql, params)
    finally:
        gate.leave()


def _once_on(
    layer: SQLiteChannelLayer,
    transport: LocalTransport,
    pool: _Pool,
    sql: str,
    params: tuple[Any, ...],
) -> Any:
    with _connection(transport, pool) as conn:
        # Every call writes, and SQLite lets one connection write at a time.
        # Threads of this process take turns on a mutex, which hands over
        # at once, instead of each waiting in SQLite's busy handler, which
        # sleeps 1, 2, 5, 10 ms... while the lock may already be free: from
        # 8 threads this sent 1.5 times as many messages a second. Nobody
        # waits on it longer than the busy timeout; past that a call goes
        # ahead and waits for SQLite's lock (other processes hold it too).
        turn = pool.turn.acquire(timeout=layer.busy_timeout)
        try:
            return transport.call_on(conn, sql, *params)
        finally:
            if turn:
                pool.turn.release()


def _call(layer: SQLiteChannelLayer, what: str, sql: str, *params: Any) -> Any:
    """One chanlite call, retried as the layer's async calls are (see
    LocalTransport._call): a locked call changed nothing."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            result = _once(layer, sql, params)
        except sqlite3.OperationalError as e:
            if not is_locked(e):
                raise
            attempt += 1
            time.sleep(pause_or_give_up(what, e, attempt, started, layer))
            continue
        if attempt:
            logger.info("chanlite: %s succeeded after %d retries", what, attempt)
        return result


def send(channel: str, message: dict[str, Any], *, layer: LayerRef = DEFAULT_CHANNEL_LAYER) -> int:
    """``layer.send``, synchronously. Returns the message's id; raises
    ChannelFull when the channel is at capacity."""
    instance = _resolve(layer)
    _refuse_inside_atomic(instance, "send")
    instance._check_message(message)
    instance.require_valid_channel_name(channel)
    data = instance.serialize(message)
    sent: int = _call(instance, f"send to {channel!r}", "SELECT channel_send(?, ?)", channel, data)
    instance.transport.sent(instance.non_local_name(channel))
    return sent


def group_send(
    group: str, message: dict[str, Any], *, layer: LayerRef = DEFAULT_CHANNEL_LAYER
) -> int:
    """``layer.group_send``, synchronously: full members are skipped. Returns
    how many members it was delivered to."""
    instance = _resolve(layer)
    _refuse_inside_atomic(instance, "group_send")
    instance._check_message(message)
    instance.require_valid_group_name(group)
    data = instance.serialize(message)
    delivered: int = _call(
        instance, f"group_send to {group!r}", "SELECT group_send(?, ?)", group, data
    )
    if delivered:
        instance.transport.sent(None)
    return delivered


def group_add(group: str, channel: str, *, layer: LayerRef = DEFAULT_CHANNEL_LAYER) -> None:
    """``layer.group_add``, synchronously."""
    instance = _resolve(layer)
    _refuse_inside_atomic(instance, "group_add")
    instance.require_valid_group_name(group)
    instance.require_valid_channel_name(channel)
    _call(instance, f"group_add to {group!r}", "SELECT group_add(?, ?)", group, channel)


def group_discard(group: str, channel: str, *, layer: LayerRef = DEFAULT_CHANNEL_LAYER) -> None:
    """``layer.group_discard``, synchronously."""
    instance = _resolve(layer)
    _refuse_inside_atomic(instance, "group_discard")
    instance.require_valid_group_name(group)
    instance.require_valid_channel_name(channel)
    _call(instance, f"group_discard from {group!r}", "SELECT group_discard(?, ?)", group, channel)


def close(layer: LayerRef = DEFAULT_CHANNEL_LAYER) -> None:
    """Close the layer's idle pool connections in this process (ones in use
    close when given back). The pool opens new ones if used again. The
    layer's own ``close()`` has the same effect on the next call."""
    _pool(_resolve(layer)).close_idle()


def pool_stats(layer: LayerRef = DEFAULT_CHANNEL_LAYER) -> PoolStats:
    """The layer's pool in this process."""
    pool = _pool(_resolve(layer))
    with pool.lock:
        return PoolStats(len(pool.idle), pool.in_use, pool.opened, pool.closed)
