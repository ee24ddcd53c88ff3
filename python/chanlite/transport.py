"""What the channel layer needs from where its SQL runs and how its receivers wake.

:class:`chanlite.layer.SQLiteChannelLayer` holds the channel layer's logic:
configuration, message (de)serialization and encryption, name checks, the
per-queue receivers and their buffers (:mod:`chanlite.receiver`), and the
Channels contract built on them. Everything that touches a database goes
through one :class:`Transport`:

* :mod:`chanlite.local` runs chanlite's SQL functions on a database file (or
  the in-memory test database) through :mod:`sqlite3`: a pool of threads with
  a connection each, plus a connection on each event loop's own thread for
  calls that need not wait for a lock; receivers wake on the extension's bell
  file, watched with inotify.
* a cluster transport runs the same SQL functions on a dqlite cluster through
  a network client, and wakes receivers through a notification hub.

A transport is made by the layer's ``__init__``, once the layer's settings
are set, and is given the layer as its :class:`Host`. It stores the settings
(:meth:`Host` attributes ``expiry``, ``group_expiry``, ``capacity``,
``capacity_globs``) in the database before its first call there, with
``chanlite_config(key, value)`` and ``chanlite_capacity(glob, n)``, and again
after :meth:`Transport.close` (the layer may be used after close()).

Errors. The SQL functions raise errors whose text starts with ``chanlite:``.
A transport turns ``chanlite: channel full...`` into
:class:`channels.exceptions.ChannelFull` (its argument the text after
``channel full: ``, else the channel) and ``chanlite: invalid channel name``
/ ``chanlite: invalid group name`` into :class:`TypeError`, and raises any
other error as it came. An error that means "nothing was done, try again
later" (SQLite's ``database is locked``, a cluster's leader change) is retried
by the transport inside :meth:`Transport.send`, ``group_*`` and ``flush``, with
a jittered backoff, for up to ``Host.lock_timeout`` seconds in all, then
raised (the local transport raises ``chanlite.layer.DatabaseLocked``); each
retry is logged on the ``chanlite`` logger (WARNING), and a success after
retries once (INFO). Pops are retried by the receiver instead, for as long as
somebody waits: see :meth:`Transport.pause_before_retry`.

Waking, the contract a receiver relies on. A receiver task (one per queue a
process receives from, run while anybody waits on it) loops::

    watch = await transport.arm()          # armed *before* looking
    with host.receive_lock:
        if watch is not None:
            watch.collect()                # pending notices: kick receivers
        seen = queue.wakes                 # every kick counts this up
    rows = await transport.pop(queue, want, keep=buffer_them)
    if not rows:                           # wait unless kicked since `seen`
        with host.receive_lock:
            if queue.wakes == seen:
                listening = watch.listen(loop) if watch else transport.kicked_by_every_change
        await kick (or, not listening, a poll backoff of 1 to 50 ms)
        ... watch.unlisten(loop)

so a transport must guarantee: once :meth:`Transport.arm` has returned a
:class:`Watch`, any commit that adds a message to any queue, by any process,
ends with :meth:`Host.kick_locked` (or :meth:`Host.kick`) called for that
queue (or for every queue, ``None``): either from :meth:`Watch.collect`, or,
while some receiver of an event loop listens (:meth:`Watch.listen`), as soon
as the notice arrives, from that loop or any thread. Spurious kicks only cost
a look; a missed one leaves a receiver asleep with a message waiting. Sends
made by this process are kicked by the layer itself, through
:meth:`Transport.sent`, which a networked transport may also use to publish
the commit. A transport that cannot watch returns None from arm() and
receivers poll.

Fork. The layer registers with ``os.register_at_fork`` and calls
:meth:`Transport.before_fork`, :meth:`Transport.after_fork_in_parent` and
:meth:`Transport.after_fork_in_child`. No connection, socket, thread or watch
of the parent may be used by the child (SQLite forbids it for connections; a
shared socket or inotify descriptor would steal each other's replies and
notices). A fork that Python did not see is noticed by the layer
(:meth:`Host.check_process`), which a transport calls before each call.

Synchronous callers. :mod:`chanlite.sync` makes the layer's calls from code
with no event loop, on connections it pools, through the local transport's
own small API (``open_connection``, ``prepare``, ``call_on``, ``gate``,
``epoch``); it refuses a layer on another transport with a TypeError naming
``async_to_sync`` instead. Nothing here asks a transport to support it.

Threads. One layer serves every event loop of its process (``async_to_sync``
runs each call in a loop of its own, on some thread): a transport's methods
may be called from several loops, in several threads, at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["Host", "Row", "Transport", "Watch"]

#: A popped message: (the channel it was sent to, its body as stored: BLOB
#: bytes, or TEXT str when another client sent JSON, its expires_at in Unix
#: seconds on the chanlite clock).
Row = tuple[str, bytes | str, float]


class Host(Protocol):
    """The layer, as its transport sees it."""

    #: Settings stored in the database (chanlite_config, chanlite_capacity):
    #: seconds a message lives, seconds a group membership lives, the
    #: default capacity, and (glob, capacity) per channel pattern.
    expiry: float
    group_expiry: float
    capacity: int
    capacity_globs: list[tuple[str, int]]
    #: Seconds a send, group call or flush keeps retrying a database that
    #: says "try again later" before raising.
    lock_timeout: float

    @property
    def receive_lock(self) -> threading.Lock:
        """Guards the receivers' state and the transport's waking state
        (Watch methods run with it held). Never held across an await, a
        blocking call or SQL."""
        ...

    def kick_locked(self, queue: str | None) -> None:
        """(receive_lock held) Receivers of this process's queue (every
        queue, for None) look again now. Cheap; any thread."""
        ...

    def kick(self, queue: str | None) -> None:
        """kick_locked, taking receive_lock."""
        ...

    def check_process(self) -> None:
        """Start the layer afresh (calling Transport.after_fork_in_child)
        if this is a forked child that the fork handlers missed."""
        ...


class Watch(Protocol):
    """A transport's armed watch for changes, shared by every receiver of
    the layer (see the module's docstring for the contract). Every method
    runs with ``Host.receive_lock`` held and must not block."""

    def current(self) -> bool:
        """Still good for a new wait: False once the transport closed, or
        forked, so that a receiver arms again."""
        ...

    def collect(self) -> None:
        """Deliver the notices that arrived since the last collect() (or
        since arm()) now, as Host.kick_locked calls. Called by a receiver
        just before it looks: a notice collected here is one it need not
        wait for."""
        ...

    def listen(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One more receiver of loop waits: from now until its unlisten(),
        notices must reach Host.kick_locked / Host.kick without anybody
        calling collect(). False if that cannot be done for this loop (the
        receiver then polls, and does not call unlisten())."""
        ...

    def unlisten(self, loop: asyncio.AbstractEventLoop) -> None:
        """That receiver of loop no longer waits."""
        ...


class Transport(Protocol):
    """Where the layer's SQL runs and how its receivers are woken.

    ``data`` is a serialized message (msgpack, maybe encrypted), stored as a
    BLOB; queue names are channel names, or a process's ``prefix!`` for all
    of its ``prefix!local`` channels (chanlite pops them together). Names
    and messages have been checked by the layer already. Calls may come from
    several event loops at once (see the module's docstring).
    """

    @property
    def wake_method(self) -> str | None:
        """How receivers wait, once one has armed (None before): for the
        local transport "inotify", "polling" or "memory". Shown to users as
        ``layer.wake_method``; a change is logged."""
        ...

    async def send(self, channel: str, data: bytes) -> None:
        """``SELECT channel_send(channel, data)``, committed when this
        returns; ChannelFull at capacity. Retried as the module says."""
        ...

    async def group_send(self, group: str, data: bytes) -> int:
        """``SELECT group_send(group, data)``, committed: how many members
        it was delivered to (full ones are skipped)."""
        ...

    async def group_add(self, group: str, channel: str) -> None:
        """``SELECT group_add(group, channel)``, committed."""
        ...

    async def group_discard(self, group: str, channel: str) -> None:
        """``SELECT group_discard(group, channel)``, committed."""
        ...

    async def flush(self) -> None:
        """``SELECT channel_flush()``, committed: every channel and group of
        the database is emptied."""
        ...

    async def pop(self, queue: str, want: int, keep: Callable[[list[Row]], None]) -> list[Row]:
        """Pop up to want messages of queue: ``SELECT channel, message,
        expires_at FROM channel_recv_batch(queue, want)``, committed (the
        rows are gone from the database). Empty if none.

        A pop cannot be undone, so it must not be lost to a cancellation:
        cancelled once the pop may have begun, this waits for it to end,
        hands what it popped to keep() (the receiver buffers them), and then
        raises CancelledError. An error raised instead goes to
        pause_before_retry()."""
        ...

    def pause_before_retry(self, error: Exception, attempt: int, what: str) -> float | None:
        """After pop() raised error on attempt number `attempt` (1, 2, ...)
        of the receiver described by `what`: None if the error is final (the
        waiting receive() calls raise it), else the seconds to wait before
        trying again, the retry logged (WARNING, logger ``chanlite``).
        Receivers retry for as long as somebody waits."""
        ...

    def sent(self, queue: str | None) -> None:
        """This process committed a send to queue (to any queues, for None:
        a group_send): wake its receivers at once (Host.kick), and, where
        they are not woken otherwise, receivers of other layers or processes
        on the same database."""
        ...

    async def arm(self) -> Watch | None:
        """The watch, armed, for a receiver about to look: any commit from
        now on reaches Host.kick_locked (see the module's docstring). None
        where there is no watch: receivers wait for kicks alone if
        kicked_by_every_change, else poll. Sets wake_method."""
        ...

    @property
    def kicked_by_every_change(self) -> bool:
        """With no watch: every change to the database is a sent() of this
        process (the in-memory test database), so receivers need not poll."""
        ...

    def set_clock(self, now: float | None) -> None:
        """Pin "now" (Unix seconds) for chanlite's expiry on every call from
        here on (``chanlite_clock(now)``), or use the real clock again with
        None. For tests; a cluster may refuse with an error."""
        ...

    def close_locked(self) -> None:
        """(receive_lock held) The first half of the layer's close(): after
        it, new calls use new connections and arm a new watch; the current
        watch is no longer current(). The layer then stops its receivers."""
        ...

    async def close(self) -> None:
        """The second half: close what close_locked() set aside, once calls
        in flight have ended (waiting at most ``close_timeout``). The
        transport opens new connections if used afterwards."""
        ...

    @property
    def close_timeout(self) -> float:
        """Seconds the layer's close() waits for its receivers to stop (a
        pop in flight ends within it)."""
        ...

    def before_fork(self) -> None:
        """Just before fork(), on the forking thread: let no connection,
        socket or thread cross it (wait for calls in flight, then close)."""
        ...

    def after_fork_in_parent(self) -> None:
        """After fork(), in the parent: undo what before_fork() held shut;
        the parent reopens connections on its next call."""
        ...

    def after_fork_in_child(self) -> None:
        """In the child: forget the parent's connections, threads and watch
        without using them (closing a parent's SQLite connection could undo
        the parent's work), and start afresh on the next call."""
        ...
