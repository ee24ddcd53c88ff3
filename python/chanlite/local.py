"""The local transport: chanlite's SQL on a database file of this machine.

Every operation is one chanlite SQL call. Sends and pops run on the event
loop's thread, on a connection of its own whose busy timeout is 0, so that
they never wait for a lock there: one that would fails at once, having done
nothing, and runs again on a small pool of threads that each hold a
connection (WAL, synchronous=NORMAL, a busy timeout), as every other call
does. A database locked past the busy timeout is retried with a backoff.

Waking. A receiver that finds its queue empty waits for the extension's bell
(``<database>-chanlite``, rung after every committed send of any process): on
Linux, one inotify descriptor per layer and process (:class:`_Bell`), read by
the event loops whose receivers wait, with ``add_reader``; no thread, no timer.
A receiver arms before it looks (the watch exists and is drained, and it notes
its queue's wake count), so a commit between its look and its wait leaves a
ring that wakes it. Elsewhere (not Linux, inotify failing, ``wake="polling"``)
it looks again with a backoff from 1 to 50 ms. ``layer.wake_method`` says which.

Checkpoints and commits (issue 11): the layer's connections never checkpoint;
a thread per layer and process does (:class:`_Checkpointer`), keeping the WAL
bounded. The sends that one event loop's coroutines make in one turn commit
together (:meth:`LocalTransport.send`). See docs/performance-notes.md.

Test mode: ``path=":memory:"`` is one in-memory database per process
(:class:`_MemoryDatabase`), with no bell: sends wake receivers directly.

Fork: see :mod:`chanlite.fork`. The layer's settings (``busy_timeout``,
``threads``, ``wake``, ``loop_calls``, ...) are read from the layer, where
they are documented.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import random
import sqlite3
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from channels.exceptions import ChannelFull

import chanlite
from chanlite import _inotify
from chanlite.fork import AFTER_FORK_IN_CHILD_FIRST, ForkGate, reinit_lock
from chanlite.transport import Host, Row

if TYPE_CHECKING:
    from chanlite.layer import SQLiteChannelLayer

__all__ = ["BEFORE_FORK_CLOSE", "DatabaseLocked", "LocalTransport", "is_locked", "pause_or_give_up"]

T = TypeVar("T")

logger = logging.getLogger("chanlite")


class DatabaseLocked(sqlite3.OperationalError):
    """A layer call found the database locked (another connection held the
    write lock past the busy timeout) for longer than the layer's
    lock_timeout. The call did nothing, so retrying it cannot duplicate."""

    # Its documented home, re-exported there: tracebacks and pickles name it so.
    __module__ = "chanlite.layer"


#: Backoff between attempts on a locked database: doubling from LOCK_PAUSE_MIN
#: to LOCK_PAUSE_MAX, each pause drawn from its upper half, so that processes
#: that failed together do not all come back at the same instant.
LOCK_PAUSE_MIN = 0.05
LOCK_PAUSE_MAX = 1.0


def is_locked(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY (the write lock, past the busy timeout) or SQLITE_LOCKED
    (a table of a shared-cache database), any extended code."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(error)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _lock_pause(attempt: int) -> float:
    top = min(LOCK_PAUSE_MAX, LOCK_PAUSE_MIN * 2 ** (attempt - 1))
    return random.uniform(top / 2, top)


def pause_or_give_up(
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
        self.checkpoint_generation = -1


#: In LocalTransport._loop_conns while a thread's loop connection opens.
_OPENING = _LoopConnection(None)

#: Called with a layer just before a fork, once its gate is shut and its own
#: connections are closed: other modules' connections on the layer's behalf
#: (chanlite.sync's pools) close there too.
BEFORE_FORK_CLOSE: list[Callable[[SQLiteChannelLayer], None]] = []
#: Connections a child inherited still open (its parent could not close them
#: before the fork): kept referenced, never used and never closed, since
#: closing them in the child could undo the parent's work in the WAL index.
_INHERITED: list[sqlite3.Connection] = []


def _recreate_bell(path: str) -> None:
    """Create the bell at path if it is missing, by the extension's rules
    (ext/wake.c, open_bell): the database file's permission bits, never
    through a symlink nor blocking on a FIFO, and only a regular file."""
    try:
        mode = os.stat(path.removesuffix("-chanlite")).st_mode & 0o777
    except OSError:
        mode = 0o600
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode), True
    except FileExistsError:
        fd, created = os.open(path, flags), False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"the bell {path} is not a regular file")
        if created:  # the umask may have taken bits the database has
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


class _Bell:
    """This process's watch on the extension's bell, for one layer: an inotify
    descriptor that becomes readable when any process commits a send.

    It is registered (``add_reader``) in each event loop that has receivers
    waiting, and only while they wait; whichever loop finds it readable drains
    it and wakes every receiver of the layer, in any loop. Guarded by the
    layer's lock. A retired bell (the layer closed) closes its descriptor once
    no loop has it registered. The local transport's Watch.
    """

    def __init__(self, path: str, transport: LocalTransport) -> None:
        self.path = path
        self.transport = transport
        self.fd = _inotify.watch(path)
        self.pid = os.getpid()
        self.loops: dict[asyncio.AbstractEventLoop, int] = {}  # loop -> receivers waiting
        self.retired = False
        self.fd_open = True

    def current(self) -> bool:
        """Usable for a new wait: not retired, and this process's (not a fork's)."""
        return not self.retired and self.pid == os.getpid()

    def collect(self) -> None:
        """Read pending rings, waking every receiver if there were any."""
        self.transport._drain(self)

    def listen(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One more receiver of loop waits for the bell; False if this loop
        cannot watch a descriptor."""
        try:
            self._listen(loop)
        except (NotImplementedError, OSError, RuntimeError, ValueError) as e:
            logger.warning("chanlite: %r cannot watch the bell (%s): polling", loop, e)
            return False
        return True

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        for gone in [other for other in self.loops if other.is_closed()]:
            del self.loops[gone]  # closed with a receiver waiting: its selector is gone
        waiting = self.loops.get(loop, 0)
        if waiting == 0:
            loop.add_reader(self.fd, self.transport._on_bell, self)
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
            _recreate_bell(self.path)
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
        self.layers: weakref.WeakSet[Host] = weakref.WeakSet()

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
            layer.kick(queue_name)

    @classmethod
    def after_fork_in_child(cls) -> None:
        """The executor's thread is the parent's: start another. The
        connection stays: the child has a copy of the database of its own
        (test mode is one process's; a forked child no longer shares it)."""
        cls._all_lock = reinit_lock(cls._all_lock)
        for memory in cls._all.values():
            memory.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="chanlite-memory"
            )


#: The checkpointer (see _Checkpointer): how many writes of the layer's
#: connections between two looks at the WAL; the frames that make a PASSIVE
#: checkpoint due (SQLite's default auto-checkpoint); the WAL size in frames
#: past which a RESTART is tried, how long each attempt waits for readers and
#: how many attempts (short ones, writers going through in between, failed
#: 1 time in 10 where one 5 ms attempt failed 1 in 2 under load); and the
#: size past which request connections checkpoint again, as a last resort.
CHECKPOINT_SIGNAL_EVERY = 16
CHECKPOINT_FRAMES = 1000
RESTART_FRAMES = 1000
RESTART_WAIT_MS = 1
RESTART_ATTEMPTS = 5
FALLBACK_FRAMES = 1100


class _Checkpointer:
    """Checkpoints for one layer in this process, on a thread and connection
    of their own, so that no send or pop pays for one (see
    docs/performance-notes.md).

    The layer's own connections run with ``wal_autocheckpoint=0``; every
    CHECKPOINT_SIGNAL_EVERY of their writes (note_write) wake this thread,
    which reads how far the WAL has grown from its index (the ``-shm`` file,
    https://sqlite.org/walformat.html: mxFrame and nBackfill, a hint read
    without a lock) and, once CHECKPOINT_FRAMES frames wait to be copied,
    runs a PASSIVE checkpoint, as SQLite's auto-checkpoint would.

    A passive checkpoint racing the loop's writes often leaves the last
    frames uncopied, so the WAL never starts over: past RESTART_FRAMES this
    thread runs a RESTART checkpoint, waiting RESTART_WAIT_MS at most for
    readers (it holds the write lock meanwhile: loop calls go to the pool
    for that long), up to RESTART_ATTEMPTS times. If the WAL still reaches
    FALLBACK_FRAMES (restarts kept failing: a long reader somewhere; or this
    thread ran late), the bound is enforced as before this thread existed:
    request connections checkpoint again (chanlite's WAL hook, ext/disk.c,
    with its own RESTART logic) until the WAL is small, the writing thread
    checking every CHECKPOINT_SIGNAL_EVERY writes.
    """

    def __init__(self, transport: LocalTransport) -> None:
        self.transport = transport
        self.pid = os.getpid()
        self.path = transport._layer.database_path()
        self.writes = 0
        self.wanted = threading.Event()
        self.stopping = False
        self.conn: sqlite3.Connection | None = None
        self.shm: int | None = None
        self.shm_lock = threading.Lock()
        #: Checkpoints run, restarts tried, restarts that failed (for tests
        #: and benchmarks).
        self.passive = 0
        self.restarts = 0
        self.restart_failures = 0
        self.thread = threading.Thread(target=self._run, name="chanlite-checkpoint", daemon=True)
        self.thread.start()

    def note_write(self) -> None:
        """A write committed on one of the layer's connections (any thread;
        an unguarded count: one lost increment only delays a wake-up)."""
        self.writes += 1
        if self.writes >= CHECKPOINT_SIGNAL_EVERY:
            self.writes = 0
            self.wanted.set()
            # The bound must not depend on this thread getting the CPU: on
            # a loaded machine it may run late.
            frames = self._frames()
            if frames is not None and frames[0] >= FALLBACK_FRAMES:
                self.transport._request_path_checkpoints(True)

    def stop(self, timeout: float) -> bool:
        """End the thread and close its connection; False if the thread was
        still inside a checkpoint after timeout (its connection is then left
        open: closing it under the thread would be worse)."""
        self.stopping = True
        self.wanted.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                self.wanted.wait()
                self.wanted.clear()
                if self.stopping:
                    return
                try:
                    self._checkpoint_if_due()
                except (sqlite3.Error, OSError) as e:
                    logger.warning("chanlite: checkpoint failed (%s)", e)
        finally:
            if self.conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.close()
                self.conn = None
            with self.shm_lock:
                if self.shm is not None:
                    with contextlib.suppress(OSError):
                        os.close(self.shm)
                    self.shm = None

    def _frames(self) -> tuple[int, int] | None:
        """(mxFrame, nBackfill) from the WAL index, or None if unreadable."""
        with self.shm_lock:  # read by request threads too; closed by stop()
            if self.shm is None:
                if self.stopping:
                    return None
                try:
                    self.shm = os.open(self.path + "-shm", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
            try:
                head = os.pread(self.shm, 100, 0)
            except OSError:
                return None
        if len(head) < 100:
            return None
        return int.from_bytes(head[16:20], sys.byteorder), int.from_bytes(
            head[96:100], sys.byteorder
        )

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self.conn = conn
        return self.conn

    def _checkpoint_if_due(self) -> None:
        frames = self._frames()
        if self.transport._request_autocheckpoint:
            # Request connections checkpoint (the fallback): checkpoints of
            # this thread would only race theirs. Hand back once the WAL
            # has started over.
            if frames is not None and frames[0] < CHECKPOINT_FRAMES:
                self.transport._request_path_checkpoints(False)
            return
        if frames is not None:
            last, copied = frames
            if last - copied < CHECKPOINT_FRAMES and last < RESTART_FRAMES:
                return
        conn = self._connection()
        _, log, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.passive += 1
        if log >= RESTART_FRAMES:
            self.restarts += 1
            for attempt in range(RESTART_ATTEMPTS):
                if attempt:
                    time.sleep(0.0005)  # let the writers through meanwhile
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                if not busy:
                    break
            if busy:
                self.restart_failures += 1
                if log >= FALLBACK_FRAMES:
                    self.transport._request_path_checkpoints(True)


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


AFTER_FORK_IN_CHILD_FIRST.append(_MemoryDatabase.after_fork_in_child)


class LocalTransport:
    """The layer's calls on a database file (``path``, or the file of a
    Django ``database``), or on the process's in-memory test database: see
    the module's docstring, and :class:`chanlite.transport.Transport` for
    what each method promises. Reads its settings from the layer, and guards
    its state with the layer's lock."""

    def __init__(self, layer: SQLiteChannelLayer, memory_uri: str | None) -> None:
        self._layer = layer
        #: Test mode: the process's in-memory database (path=":memory:").
        self._memory = None if memory_uri is None else _MemoryDatabase.named(memory_uri)
        #: How receivers wait: "inotify" or "polling"; None until one has waited.
        self.wake_method: str | None = None
        self._bell: _Bell | None = None
        self._bell_path: str | None = None  # "" when the bell cannot be watched
        self._bell_unavailable = ""  # why not
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        #: Pools that close_locked() set aside, for close() to shut down.
        self._retired_executors: list[concurrent.futures.ThreadPoolExecutor] = []
        self._tls = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._epoch = 0  # close() counts up: what was opening before it is stale
        #: Per thread (event loop) ident: its loop connection (see _try_on_loop).
        self._loop_conns: dict[int, _LoopConnection] = {}
        #: Loop-thread calls that found the database locked and went to the pool.
        self.loop_fallbacks = 0
        self._configured = False
        self._clock: float | None = None
        self._clock_generation = 0
        if self._memory is not None:
            self._memory.layers.add(layer)
        self._gate = ForkGate()
        self._gate_shut = False  # this transport's gate was shut for a fork
        #: Checkpoints off the request path (see _Checkpointer); the
        #: wal_autocheckpoint the layer's connections run with (0 while the
        #: checkpointer keeps the WAL bounded), counted in generations.
        self._checkpointer: _Checkpointer | None = None
        self._retired_checkpointers: list[_Checkpointer] = []
        self._request_autocheckpoint = 0
        self._checkpoint_generation = 0
        #: Per thread (event loop) ident: the sends of this turn (see send).
        #: (A loop that was stopped before the end of its turn leaves its
        #: entry behind: the loop is kept, so that another is not misled.)
        #: (The task that made the turn's first send is kept: see send.)
        self._sends_this_turn: dict[
            int,
            tuple[
                asyncio.AbstractEventLoop,
                list[tuple[str, bytes, asyncio.Future[object]]],
                asyncio.Task[Any] | None,
            ],
        ] = {}
        #: Transactions that committed several sends together.
        self.sends_together = 0

    # ---- connections ----

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened and configured on first use."""
        if self._memory is not None:
            return self._memory_connection(self._memory)
        # Read once: close() (and a fork) replace self._tls meanwhile, and a
        # connection found in the old one has its clock noted there.
        tls = self._tls
        conn: sqlite3.Connection | None = getattr(tls, "conn", None)
        if conn is None:
            conn = self.open_connection()
            tls.conn = conn
            tls.clock_generation = -1
            tls.checkpoint_generation = -1
            with self._layer.receive_lock:
                self._connections.append(conn)
        self._configure(conn)  # again after a failure (a locked database)
        if tls.checkpoint_generation != self._checkpoint_generation:
            tls.checkpoint_generation = self._set_autocheckpoint(conn)
        if tls.clock_generation != self._clock_generation:
            tls.clock_generation = self._clock_generation
            conn.execute("SELECT chanlite_clock(?)", (self._clock,))
        return conn

    def open_connection(self) -> sqlite3.Connection:
        """A new connection to the database file, set up as the pool's: WAL,
        synchronous=NORMAL, the layer's busy timeout. Usable from any thread
        (one at a time); the caller closes it."""
        busy_timeout = self._layer.busy_timeout
        conn = chanlite.connect(
            self._layer.database_path(),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            # Polls the lock every 0.1-2 ms where SQLite's own handler sleeps up to
            # 100 ms: see chanlite_busy_timeout in docs/sql.
            conn.execute("SELECT chanlite_busy_timeout(?)", (int(busy_timeout * 1000),))
            self._use_wal(conn)
            _tune(conn)
        except BaseException:
            conn.close()
            raise
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
        deadline = time.monotonic() + self._layer.busy_timeout
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
        layer = self._layer
        for key, value in (
            ("expiry", layer.expiry),
            ("group_expiry", layer.group_expiry),
            ("capacity", layer.capacity),
        ):
            conn.execute("SELECT chanlite_config(?, ?)", (key, value))
        for glob, n in layer.capacity_globs:
            conn.execute("SELECT chanlite_capacity(?, ?)", (glob, n))
        self._configured = True  # only now: a locked database leaves it to the next call

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        self._layer.check_process()
        call = functools.partial(self._gated, fn, *args)
        if self._memory is not None:
            return loop.run_in_executor(self._memory.executor, call)
        with self._layer.receive_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._layer.threads, thread_name_prefix="chanlite"
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
                if not is_locked(e):
                    raise
                attempt += 1
                pause = pause_or_give_up(what or fn.__name__, e, attempt, started, self._layer)
                await asyncio.sleep(pause)
                continue
            if attempt:
                logger.info("chanlite: %s succeeded after %d retries", what or fn.__name__, attempt)
            return result

    def _sql(self, sql: str, *params: Any) -> Any:
        """One chanlite call in this thread; its single value."""
        result = self.call_on(self._connection(), sql, *params)
        self._wrote()
        return result

    def call_on(self, conn: sqlite3.Connection, sql: str, *params: Any) -> Any:
        """One chanlite call on conn; its single value, with the errors the
        layer raises (ChannelFull, TypeError for a bad name)."""
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

    def _sync_recv_batch(self, queue: str, want: int) -> list[Row]:
        return self._recv_batch_on(self._connection(), queue, want)

    def _recv_batch_on(self, conn: sqlite3.Connection, queue: str, want: int) -> list[Row]:
        try:
            rows: list[Row] = conn.execute(
                "SELECT channel, message, expires_at FROM channel_recv_batch(?, ?)",
                (queue, want),
            ).fetchall()
        except sqlite3.Error as e:
            raise self._translate(e, (queue,)) from e
        if rows:
            self._wrote()
        return rows

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
        Checkpoints do not run here: the checkpointer's thread does them
        (_Checkpointer), unless the WAL outgrew its bound, when request
        connections checkpoint again until it starts over."""
        self._layer.check_process()
        gate = self._gate
        gate.enter()
        try:
            loop_conn = self._loop_connection()
            if loop_conn is None:
                return _ON_POOL
            return fn(loop_conn.conn, *args)
        except sqlite3.OperationalError as e:
            if not is_locked(e):
                raise
            self.loop_fallbacks += 1
            return _ON_POOL
        finally:
            gate.leave()

    def _loop_connection(self) -> _LoopConnection | None:
        """This thread's loop connection, or None while it is being opened
        (in the pool: opening may wait for locks) or where there is none."""
        if self._memory is not None or not self._layer.loop_calls:
            return None
        ident = threading.get_ident()
        loop_conn = self._loop_conns.get(ident, _OPENING)
        if loop_conn is _OPENING:
            if ident not in self._loop_conns:
                with self._layer.receive_lock:
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
        if loop_conn.checkpoint_generation != self._checkpoint_generation:
            loop_conn.checkpoint_generation = self._set_autocheckpoint(loop_conn.conn)
        return loop_conn

    def _open_loop_connection(self) -> sqlite3.Connection | None:
        """(In the pool.) A connection with busy timeout 0, for a loop's
        thread; None unless the database is in WAL mode (where readers and
        the writer never block each other, so calls rarely fall back)."""
        pool_conn = self._connection()  # WAL set and settings stored, waiting if need be
        if pool_conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return None
        conn = chanlite.connect(
            self._layer.database_path(), timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA busy_timeout=0")
            _tune(conn)
        except BaseException:
            conn.close()
            raise
        with self._layer.receive_lock:
            self._connections.append(conn)
        return conn

    # ---- checkpoints (see _Checkpointer) ----

    def _set_autocheckpoint(self, conn: sqlite3.Connection) -> int:
        """Give conn the auto-checkpoint in force; the generation it has."""
        generation = self._checkpoint_generation
        conn.execute(f"PRAGMA wal_autocheckpoint={self._request_autocheckpoint}")
        return generation

    def _request_path_checkpoints(self, on: bool) -> None:
        """The WAL got past FALLBACK_FRAMES despite the checkpointer (on: a
        long reader, or the checkpointer's thread running late), or is back
        under control (off)."""
        wanted = CHECKPOINT_FRAMES if on else 0
        if wanted == self._request_autocheckpoint:
            return
        with self._layer.receive_lock:
            if wanted != self._request_autocheckpoint:
                logger.debug(
                    "chanlite: sends and receives checkpoint %s",
                    "again: the WAL keeps growing" if on else "no more: the WAL started over",
                )
                self._request_autocheckpoint = wanted
                self._checkpoint_generation += 1

    def _wrote(self) -> None:
        """A call of the layer's committed a write: the checkpointer (started
        on the first, and again after close() or a fork) counts it."""
        checkpointer = self._checkpointer
        if checkpointer is None or checkpointer.pid != os.getpid():
            if self._memory is not None:
                return
            with self._layer.receive_lock:
                if self._checkpointer is None or self._checkpointer.pid != os.getpid():
                    self._checkpointer = _Checkpointer(self)
                checkpointer = self._checkpointer
        checkpointer.note_write()

    def _loop_connection_opened(
        self, ident: int, epoch: int, opening: asyncio.Future[sqlite3.Connection | None]
    ) -> None:
        with self._layer.receive_lock:
            if epoch != self._epoch or self._loop_conns.get(ident) is not _OPENING:
                return  # the layer was closed meanwhile: close() closes it
            if opening.cancelled() or opening.exception() is not None:
                del self._loop_conns[ident]  # try again on a later call
                return
            self._loop_conns[ident] = _LoopConnection(opening.result())

    # ---- the layer's calls ----

    async def send(self, channel: str, data: bytes) -> None:
        """Group commit. The first send of a turn of this thread's event loop
        commits at once, on its own, as it did before group commit (a lone
        sender waits for nobody); the sends that other coroutines make in
        the rest of that turn wait for its end and commit together in one
        transaction on the loop connection (_send_together); so does a
        task that sends again before any other has. Each returns once its
        commit has. One that cannot run there (locked, no loop
        connection) runs on its own in the pool."""
        if self._memory is None and self._layer.loop_calls:
            loop = asyncio.get_running_loop()
            ident = threading.get_ident()
            entry = self._sends_this_turn.get(ident)
            task = asyncio.current_task()
            if entry is None or entry[0] is not loop:
                waiting: list[tuple[str, bytes, asyncio.Future[object]]] = []
                self._sends_this_turn[ident] = (loop, waiting, task)  # this turn has sent
                loop.call_soon(self._send_together, ident, waiting)
                at_once = True
            else:
                # The task that made this turn's first send sends again
                # before any other has, and no other task is ready to run
                # in this turn (the loop's queue holds only _send_together):
                # waiting for the turn's end would share nothing and cost
                # it a future and two loop iterations (for a lone sender,
                # every other send: 23k instructions of 160k,
                # bench/results/issue11.md). Where others are ready, it
                # waits, so that they run and join the turn's transaction
                # rather than queue behind its every send. A loop without
                # asyncio's ready queue (uvloop) always waits.
                ready = getattr(loop, "_ready", None)
                at_once = (
                    not entry[1] and entry[2] is task and ready is not None and len(ready) <= 1
                )
            if at_once:
                outcome = self._try_on_loop(
                    self.call_on, "SELECT channel_send(?, ?)", channel, data
                )
                if outcome is not _ON_POOL:
                    self._wrote()
                    return
            elif entry is not None:
                sent: asyncio.Future[object] = loop.create_future()
                entry[1].append((channel, data, sent))
                if await sent is not _ON_POOL:
                    return
        await self._call(
            self._sql, "SELECT channel_send(?, ?)", channel, data, what=f"send to {channel!r}"
        )

    def _send_together(
        self, ident: int, waiting: list[tuple[str, bytes, asyncio.Future[object]]]
    ) -> None:
        """(End of a loop turn, on its thread.) Commit the turn's sends: one
        alone as its own transaction, several in one, each in a savepoint
        of its own (chanlite's, inside a transaction), so that a full
        channel fails only its own send. A send cancelled before this ran
        is left out: not sent."""
        entry = self._sends_this_turn.get(ident)
        if entry is not None and entry[1] is waiting:
            del self._sends_this_turn[ident]
        turn = [s for s in waiting if not s[2].cancelled()]
        if not turn:
            return
        try:
            outcomes = self._try_on_loop(self._send_all_on, turn)
        except Exception as e:  # the transaction failed as a whole: nothing was sent
            for _, _, sent in turn:
                if not sent.done():
                    sent.set_exception(e)
            return
        if isinstance(outcomes, _OnPool):
            outcomes = [_ON_POOL] * len(turn)
        for (_, _, sent), outcome in zip(turn, outcomes, strict=True):
            if sent.done():
                continue
            if isinstance(outcome, Exception):
                sent.set_exception(outcome)
            else:
                if outcome is not _ON_POOL:
                    self._wrote()
                sent.set_result(outcome)

    def _send_all_on(
        self, conn: sqlite3.Connection, turn: Sequence[tuple[str, bytes, object]]
    ) -> list[object]:
        """Each send's outcome (None, or the error it raises); raises, having
        sent nothing, if the transaction cannot begin or commit."""
        if len(turn) == 1:
            channel, data, _ = turn[0]
            try:
                self.call_on(conn, "SELECT channel_send(?, ?)", channel, data)
            except (ChannelFull, TypeError) as e:
                return [e]
            return [None]
        conn.execute("BEGIN IMMEDIATE")  # busy timeout 0: locked fails at once
        try:
            outcomes: list[object] = []
            for channel, data, _ in turn:
                try:
                    self.call_on(conn, "SELECT channel_send(?, ?)", channel, data)
                except (ChannelFull, TypeError) as e:
                    outcomes.append(e)
                else:
                    outcomes.append(None)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.sends_together += 1
        return outcomes

    async def group_send(self, group: str, data: bytes) -> int:
        delivered: int = await self._call(
            self._sql, "SELECT group_send(?, ?)", group, data, what=f"group_send to {group!r}"
        )
        return delivered

    async def group_add(self, group: str, channel: str) -> None:
        await self._call(
            self._sql, "SELECT group_add(?, ?)", group, channel, what=f"group_add to {group!r}"
        )

    async def group_discard(self, group: str, channel: str) -> None:
        await self._call(
            self._sql,
            "SELECT group_discard(?, ?)",
            group,
            channel,
            what=f"group_discard from {group!r}",
        )

    async def flush(self) -> None:
        await self._call(self._sql, "SELECT channel_flush()", what="flush")

    async def pop(self, queue: str, want: int, keep: Callable[[list[Row]], None]) -> list[Row]:
        """Pop up to want messages: on this thread if that cannot wait for a
        lock (see _try_on_loop), else in the pool. The pop cannot be undone,
        so a cancellation waits for it and hands what it popped to keep()
        before ending."""
        rows = self._try_on_loop(self._recv_batch_on, queue, want)
        if not isinstance(rows, _OnPool):  # (mypy does not narrow `is not _ON_POOL`)
            return rows
        fut = self._submit(self._sync_recv_batch, queue, want)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                while not fut.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(fut)
                keep(fut.result())
            raise

    def pause_before_retry(self, error: Exception, attempt: int, what: str) -> float | None:
        """A database locked past the busy timeout is retried, with the
        jittered backoff of the other calls; anything else is final."""
        if not (isinstance(error, sqlite3.OperationalError) and is_locked(error)):
            return None
        pause = _lock_pause(attempt)
        _log_locked(what, attempt, pause, self._layer.busy_timeout)
        return pause

    def sent(self, queue: str | None) -> None:
        """Wake this process's receivers of a queue (all, for None) after a
        send: of this layer, or in memory, of every layer on the database
        (other processes hear the bell)."""
        if self._memory is not None:
            self._memory.kick(queue)
        else:
            self._layer.kick(queue)

    def set_clock(self, now: float | None) -> None:
        self._clock = now
        self._clock_generation += 1

    # ---- waking receivers ----

    def _sync_bell_path(self) -> tuple[str, str]:
        """(the bell's path, "") or ("", why it cannot be watched)."""
        if self._layer.wake == "polling":
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

    async def arm(self) -> _Bell | None:
        """The bell, watched, for a receiver about to look; None to poll (or,
        in memory, to wait for a send of this process)."""
        lock = self._layer.receive_lock
        if self._memory is not None and self._layer.wake != "polling":
            with lock:
                self._use("memory", "the database is in this process's memory")
            return None
        if self._bell_path is None:  # once (concurrent first looks agree)
            path, why = await self._call(self._sync_bell_path, what="finding the bell")
            with lock:
                if self._bell_path is None:
                    self._bell_path, self._bell_unavailable = path, why
        with lock:
            bell = self._bell
            if bell is not None and bell.current():
                return bell
            if bell is not None:
                bell.retire()  # inherited through fork
            self._bell = None
            if self._bell_path:
                try:
                    self._bell = _Bell(self._bell_path, self)
                except OSError as e:
                    self._bell_path, self._bell_unavailable = "", f"inotify failed: {e}"
            if self._bell is None:
                self._use("polling", self._bell_unavailable)
            else:
                self._use("inotify", f"watching {self._bell_path}")
            return self._bell

    @property
    def kicked_by_every_change(self) -> bool:
        """In memory, every send is this process's, and kicks: see _MemoryDatabase."""
        return self.wake_method == "memory"

    def _use(self, method: str, why: str) -> None:
        """Note how receivers wait, and say so once (lock held)."""
        if self.wake_method == method:
            return
        if self.wake_method is None:
            logger.info("chanlite: receivers wake by %s (%s)", method, why)
        else:
            logger.warning("chanlite: receivers now wake by %s (%s)", method, why)
        self.wake_method = method

    def _on_bell(self, bell: _Bell) -> None:
        """The bell rang (add_reader callback, in any loop that listens)."""
        with self._layer.receive_lock:
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
            self._layer.kick_locked(None)

    def _retire_bell(self) -> None:
        """Stop watching the bell (lock held): its descriptor closes now, or
        once the last loop listening to it stops."""
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.retire()

    # ---- close ----

    @property
    def close_timeout(self) -> float:
        """A call waits for a lock at most the busy timeout."""
        return self._layer.busy_timeout + 1

    def close_locked(self) -> None:
        """(Lock held.) New calls open new connections and a new pool, and
        stale loop connections are not kept; close() closes the old ones."""
        executor, self._executor = self._executor, None
        if executor is not None:
            self._retired_executors.append(executor)
        self._loop_conns = {}
        self._epoch += 1
        self._configured = False
        self._retire_bell()
        if self._checkpointer is not None:
            self._retired_checkpointers.append(self._checkpointer)
            self._checkpointer = None

    async def close(self) -> None:
        with self._layer.receive_lock:
            self._retire_bell()  # one that a receiver armed meanwhile
            executors, self._retired_executors = self._retired_executors, []
        self._tls = threading.local()
        for executor in executors:
            await asyncio.to_thread(executor.shutdown, wait=True)
        with self._layer.receive_lock:
            checkpointers, self._retired_checkpointers = self._retired_checkpointers, []
            if self._checkpointer is not None:
                # Started by a call that ran while closing: the next write
                # starts another.
                checkpointers.append(self._checkpointer)
                self._checkpointer = None
        for checkpointer in checkpointers:
            await asyncio.to_thread(self._stop_checkpointer, checkpointer)
        # Only now: a connection that a call in the pool was still opening
        # (a loop's, say) is in the list by the time the pool has stopped.
        with self._layer.receive_lock:
            connections, self._connections = self._connections, []
        await asyncio.to_thread(self._close_connections, connections)

    def _stop_checkpointer(self, checkpointer: _Checkpointer) -> None:
        if not checkpointer.stop(self._layer.busy_timeout + 1):
            logger.warning("chanlite: the checkpointer was still running; left behind")

    def _close_connections(self, connections: list[sqlite3.Connection]) -> None:
        """Close connections that no call can be using: another event loop's
        thread may be inside a call on its loop connection, so wait at the
        gate for the calls in flight (a call waits for a lock at most the
        busy timeout)."""
        gate = self._gate
        if not gate.shut(self._layer.busy_timeout + 1):
            logger.warning("chanlite: close(): a call was still running; closing anyway")
        try:
            for conn in connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        finally:
            gate.open()

    # ---- for chanlite.sync: calls on connections it pools itself ----

    @property
    def in_memory(self) -> bool:
        """Test mode: the in-memory database, whose one connection only its
        own thread uses (call_in_memory); no connection of the caller's."""
        return self._memory is not None

    def call_in_memory(self, sql: str, *params: Any) -> Any:
        """(Test mode) One chanlite call on the in-memory database, in its
        thread, waited for."""
        assert self._memory is not None
        return self._memory.executor.submit(self._sql, sql, *params).result()

    @property
    def gate(self) -> ForkGate:
        """Enter it around every call on a connection to the database (and
        leave it after), as the layer's own calls do: a fork() waits for the
        calls inside, then BEFORE_FORK_CLOSE closes the caller's idle
        connections. Read it for each call: a fork replaces it."""
        return self._gate

    @property
    def epoch(self) -> int:
        """Counts the layer's close() calls (and forks): a connection set up
        in an older epoch is closed rather than used again."""
        return self._epoch

    def prepare(self, conn: sqlite3.Connection, clock_generation: int) -> int:
        """Make conn (from open_connection()) ready for a call: the layer's
        settings stored (once per epoch), and its clock pinned unless
        clock_generation (-1 at first) is current. Returns the generation
        to pass next time."""
        self._configure(conn)  # again after close(), or a locked first try
        if clock_generation != self._clock_generation:
            conn.execute("SELECT chanlite_clock(?)", (self._clock,))
        return self._clock_generation

    # ---- fork() ----

    def before_fork(self) -> None:
        """Let no connection cross the fork: wait for the calls inside SQLite
        to end (a call waits for a lock at most the busy timeout), then close
        every connection. The parent opens new ones on its next call."""
        busy_timeout = self._layer.busy_timeout
        self._gate_shut = True
        if not self._gate.shut(busy_timeout + 1):
            logger.warning(
                "chanlite: fork() while a call was still inside SQLite after %.1f s: "
                "the child leaves this process's connections alone and opens its own",
                busy_timeout + 1,
            )
            return
        if self._memory is not None:
            return  # one in-memory database per process: the parent keeps it
        with self._layer.receive_lock:
            connections, self._connections = self._connections, []
            self._tls = threading.local()
            self._loop_conns = {}
            self._epoch += 1  # a loop connection being opened is stale
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            self._stop_checkpointer(checkpointer)  # its connection must not cross either
            if checkpointer.thread.is_alive():
                self._retired_checkpointers.append(checkpointer)
        self._close_connections(connections)  # the gate is shut already: no wait
        for close in BEFORE_FORK_CLOSE:
            close(self._layer)

    def after_fork_in_parent(self) -> None:
        if self._gate_shut:
            self._gate_shut = False
            self._gate.open()

    def after_fork_in_child(self) -> None:
        """The parent's connections (never used here, never closed), its
        pool's threads (they do not exist here) and its bell watch (the
        parent's inotify instance) go."""
        self._gate = ForkGate()
        self._gate_shut = False
        _INHERITED.extend(self._connections)
        _INHERITED.extend(c.conn for c in self._loop_conns.values() if c.conn is not None)
        self._connections = []
        self._loop_conns = {}
        self._tls = threading.local()
        self._epoch += 1
        self._executor = None  # its threads are the parent's; never shut them down here
        self._retired_executors = []
        # The parent's checkpointer threads do not exist here; a connection
        # one of them could not close before the fork is never touched.
        for checkpointer in [self._checkpointer, *self._retired_checkpointers]:
            if checkpointer is not None and checkpointer.conn is not None:
                _INHERITED.append(checkpointer.conn)
        self._checkpointer = None
        self._retired_checkpointers = []
        self._sends_this_turn = {}
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.retire()  # closes this process's copy of the descriptor only
