"""The receivers: what this process has popped of each queue, and who waits for it.

A process keeps, per SQLite queue it receives from (one ``prefix!`` for all
of its process-specific channels, or one normal channel), a :class:`_Queue`:
bounded per-channel buffers, the receive() calls waiting on them, and at
most one receiver task that pops messages from SQLite into the buffers while
anybody waits (and stops when nobody does). A message popped from SQLite is
only ever put in a buffer; a receive() takes one out and returns it in the
same step, with no await in between, so a receive() cancelled at any point
has taken nothing, and whatever the receiver popped stays buffered for the
next receive() of that channel. The buffers are shared by every event loop
of the process (async_to_sync runs each call in a loop of its own).

Waking: a receiver arms the transport's watch before it looks, notes its
queue's wake count, and waits only if nothing has moved it since; see
:mod:`chanlite.transport` for the contract and :mod:`chanlite.local` for the
bell that implements it on a database file. Its state is guarded by the
layer's lock, and it uses the layer's private helpers (``_lock``, ``_now``,
``_buffer_size``, ``_forget_if_idle``): the two are one unit, split for
reading.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from chanlite.transport import Row, Watch

if TYPE_CHECKING:
    from chanlite.layer import SQLiteChannelLayer

logger = logging.getLogger("chanlite")

#: Most messages one receiver pops from SQLite in one call.
BATCH = 100
#: ... for a prefix! queue whose channels are hungry, one each: a group_send
#: to a process's many members is then popped in one transaction, not one
#: per 100 (each of which waits for the write lock again).
LOCAL_BATCH_MAX = 1000
#: Poll intervals where the bell cannot be watched (see _Queue.wait_for_messages).
POLL_MIN = 0.001
POLL_MAX = 0.05


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
        # The channels with a receive() waiting and nothing buffered, kept up
        # to date (_note) wherever waiters or buffers change: _demand() runs
        # on every look and every receive() that ends, and counting them
        # there costs the whole process's loop time when one process holds
        # 10,000 of them (bench/neighbours).
        self.hungry: set[str] = set()
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
                self._note(channel)
                self._ensure_receiver(loop)
            woken = False
            try:
                await fut
                woken = True
            finally:
                with lock:
                    waiting = self.waiters.get(channel, [])
                    with contextlib.suppress(ValueError):
                        waiting.remove(waiter)
                    if not waiting:
                        self.waiters.pop(channel, None)
                    self._note(channel)
                    # For a prefix! queue, look only when this channel stopped
                    # being hungry (its last waiter left an empty buffer), the
                    # one way leaving can end demand.
                    if (
                        self.task is not None
                        and (not self.local or (not waiting and not self.buffers.get(channel)))
                        and self._demand() == 0
                    ):
                        self._kick()  # a waiting receiver stops: nobody needs it
                    # Woken, this get() looks again in this same queue, and
                    # waits in it if it finds nothing: forgotten now, the
                    # queue would get a receiver of its own beside the one
                    # a new receive() starts, and what it popped would wait
                    # in buffers no later receive() looks at (lost with a
                    # cancelled receive(): bench/soak found it).
                    if not woken:
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
            self._note(channel)
        return item

    def _note(self, channel: str) -> None:
        """Keep `hungry` true of channel after its waiters or buffer changed (lock held)."""
        if self.waiters.get(channel) and not self.buffers.get(channel):
            self.hungry.add(channel)
        else:
            self.hungry.discard(channel)

    def recount_hungry(self) -> None:
        """After buffers or waiters were cleared wholesale (lock held)."""
        self.hungry = {ch for ch in self.waiters if not self.buffers.get(ch)}

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
            hungry = len(self.hungry)
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
                self.hungry.discard(channel)
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
                self._note(channel)

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
