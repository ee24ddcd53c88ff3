"""The cluster transport: the channel layer on a dqlite cluster.

    CHANNEL_LAYERS = {"default": {
        "BACKEND": "chanlite.layer.SQLiteChannelLayer",
        "CONFIG": {"cluster": ["10.0.0.1:9001", "10.0.0.2:9001", "10.0.0.3:9001"]},
    }}

Every node runs ``chanlite-node`` (chanlite inside a dqlite node). This
module talks to the cluster's leader with the ``dqlite-client`` package
(asyncio; Python >= 3.13: ``pip install 'chanlite[cluster]'``).

Writes. dqlite replicates only what an EXEC request commits, so every call is
a transaction: EXEC ``BEGIN IMMEDIATE``, one QUERY per chanlite call, EXEC
``COMMIT``. The leader runs one write transaction at a time, and a Raft
commit costs a round trip to a majority, so calls waiting meanwhile go into
the next transaction together (a batch): the more callers, the fewer commits
per call. A chanlite error in one call (a full channel) undoes that call
only, so the others of its batch still commit.

One client per layer and process: its own event loop on a thread of its own,
since a dqlite connection belongs to one event loop and the layer serves any
number of them (``async_to_sync`` makes one per call).

Leader changes. "Not the leader", a lost connection, or a busy leader
before COMMIT is sent means nothing was committed: the batch runs again,
against whichever node leads now (the client asks every configured node,
so one that is down only costs its dial), with a jittered backoff, for up to
``lock_timeout`` seconds, each retry logged (WARNING, logger ``chanlite``).

Ambiguous commits. A connection lost while COMMIT was on its way leaves the
outcome unknown: the leader may have committed it or not. Each transaction
that writes also inserts a random id into ``chanlite_outcome`` (sql/schema.sql),
so after reconnecting the client looks the id up on the new leader (dqlite
runs a Raft barrier before a new leader's first query, so it sees every
committed entry): found, the batch committed, and its results (the rows a
pop returned before COMMIT, already in hand) are delivered; not found, it
did not, and it runs again. Nothing is sent twice, and nothing popped is
lost. A client deletes its ids in its next transaction; ids of clients that
died are trimmed after ``OUTCOME_RETENTION`` seconds. What this cannot close
is documented in docs/cluster.md: a lookup that cannot be made within
``lock_timeout`` (the cluster down that long) fails a send with
:class:`OutcomeUnknown`; a pop keeps looking for as long as it takes.

Waking. Each node runs a wake hub (a line protocol on TCP, by default on the
node's port + 1): ``watch <queue>`` subscribes to a queue, ``ring <queue>...``
sends ``<queue>`` to its watchers. A layer keeps a connection to every hub:
after each commit it rings every node with the queues it wrote to, and it
watches the queues it receives from on one hub (moving to another when that
one goes away). A receiver looks only once the hub has answered ``ok
watch``, so a commit after its look always rings it. Rings cost nothing
while idle; a ring lost with a connection is covered by kicking every
receiver whenever a hub connection is made again, and by a slow safety
re-check (``recheck`` seconds, 5 by default).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from channels.exceptions import ChannelFull

from chanlite.transport import Host, Row

if sys.version_info < (3, 13):  # pragma: no cover - depends on the interpreter
    raise ImportError(
        "chanlite: CONFIG 'cluster' needs Python >= 3.13 (dqlite-client supports no older "
        f"Python); this is Python {sys.version_info.major}.{sys.version_info.minor}"
    )
try:
    from dqliteclient import (
        ClusterClient,
        ClusterError,
        DqliteConnection,
        DqliteConnectionError,
        DqliteError,
        OperationalError,
        ProtocolError,
    )
    from dqlitewire.constants import LEADER_ERROR_CODES, LEADER_LOST_DB_LOOKUP_SUBSTRING
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "chanlite: CONFIG 'cluster' needs dqlite-client: pip install 'chanlite[cluster]'"
    ) from e

__all__ = ["ClusterDiskError", "ClusterTransport", "ClusterUnavailable", "OutcomeUnknown"]

logger = logging.getLogger("chanlite")

#: Most calls one transaction carries.
MAX_BATCH = 200
#: Seconds an outcome id of a client that never came back stays.
OUTCOME_RETENTION = 600.0
#: Seconds between sweeps of such ids.
OUTCOME_SWEEP_EVERY = 60.0
#: Pauses between attempts: doubling from PAUSE_MIN to PAUSE_MAX, each drawn
#: from its upper half so that clients that failed together come back apart.
PAUSE_MIN = 0.002
PAUSE_MAX = 0.5
#: A leader busy with another client's transaction is retried quietly for
#: this long (the local transport's busy timeout), then with warnings.
QUIET_BUSY = 5.0
#: Rings kept for a hub while its connection is being made.
MAX_PENDING_RINGS = 1000
#: Seconds to wait for a hub to acknowledge a watch.
WATCH_ACK_TIMEOUT = 1.0

SQLITE_BUSY = 5
SQLITE_IOERR = 10
SQLITE_NOTFOUND = 12
SQLITE_FULL = 13


class ClusterUnavailable(Exception):
    """No leader answered for lock_timeout seconds: nothing was done, so the
    call may be retried."""


class ClusterDiskError(Exception):
    """The leader could not write its log (a full disk): nothing was
    committed; retry once the nodes have space."""


class OutcomeUnknown(Exception):
    """A send's COMMIT was cut off (or failed on a leader that could not
    write it, which may have sent it on) and no leader could say, within
    lock_timeout, whether it had committed: the message may have been sent."""


class _Retry(Exception):
    """Nothing was committed; run the batch again."""

    def __init__(self, cause: BaseException, busy: bool = False) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.busy = busy


def _pause(attempt: int) -> float:
    top = min(PAUSE_MAX, PAUSE_MIN * 2 ** (attempt - 1))
    return random.uniform(top / 2, top)


def _server_text(error: OperationalError) -> str:
    """The node's own message (the client appends the node's address)."""
    return error.raw_message or error.message


def _is_chanlite(error: BaseException) -> bool:
    return isinstance(error, OperationalError) and _server_text(error).startswith("chanlite:")


def _retryable(error: BaseException) -> bool:
    """Nothing was committed and another attempt may succeed (leader change,
    lost connection, busy leader)."""
    if isinstance(error, DqliteConnectionError | ClusterError | ProtocolError | OSError):
        return True
    if isinstance(error, TimeoutError):
        return True
    if isinstance(error, OperationalError) and not _is_chanlite(error):
        # BUSY: another client's transaction holds the leader's write lock.
        if error.code in LEADER_ERROR_CODES or error.code & 0xFF == SQLITE_BUSY:
            return True
        if _server_text(error) == "barrier error":
            return True  # a leader that could not commit its barrier: changing, or a full disk
        # What dqlite says when leadership moved while it opened the database.
        text = _server_text(error).lower()
        return error.code == SQLITE_NOTFOUND and text.startswith(LEADER_LOST_DB_LOOKUP_SUBSTRING)
    return False


def _disk_error(error: BaseException) -> bool:
    """The leader could not write its Raft log (SQLITE_IOERR that is not a
    leader change, or SQLITE_FULL): a full or failing disk."""
    return (
        isinstance(error, OperationalError)
        and error.code not in LEADER_ERROR_CODES
        and error.code & 0xFF in (SQLITE_IOERR, SQLITE_FULL)
    )


def _translate(error: BaseException, name: str) -> BaseException:
    """A chanlite error as the layer raises it (see chanlite.transport)."""
    if isinstance(error, OperationalError) and _disk_error(error):
        return _disk_failure(error, "")
    if not isinstance(error, OperationalError):
        return error
    text = _server_text(error)
    if text.startswith("chanlite: channel full"):
        return ChannelFull(text.partition("channel full: ")[2] or name)
    if text.startswith(("chanlite: invalid channel name", "chanlite: invalid group name")):
        return TypeError(text)
    return error


def _disk_failure(error: OperationalError, how_long: str) -> ClusterDiskError:
    return ClusterDiskError(
        f"chanlite: the cluster's leader cannot write{' ' + how_long if how_long else ''} "
        f"({_server_text(error)}, code {error.code}): is a node's disk full? Nothing was "
        "committed; free space on the nodes and retry"
    )


def _queue_of(channel: str) -> str:
    """The queue a channel's messages go to: ``prefix!`` for ``prefix!local``."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def _split_address(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"chanlite: {what} must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


@dataclass
class _Call:
    """One chanlite call waiting for a transaction."""

    sql: str
    params: list[Any]
    name: str  # the channel or group, for errors
    future: concurrent.futures.Future[Any]
    kind: str  # "send", "group_send", "pop" or "other"
    members: list[str] = field(default_factory=list)  # group_send: member channels


class _Session:
    """What one layer of one process holds of the cluster: a client event loop
    on a thread of its own, the connection to the leader, and the hub
    connections. Everything but submit() runs on that loop."""

    def __init__(self, transport: ClusterTransport) -> None:
        self.transport = transport
        self.host = transport.host
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.pending: collections.deque[_Call] = collections.deque()
        self.writer: asyncio.Task[None] | None = None
        self.client: ClusterClient | None = None
        self.conn: DqliteConnection | None = None
        self.conn_clock = -1  # the clock generation pinned on conn
        self.configured = False
        self.confirmed: list[str] = []  # outcome ids known committed, to delete
        self.last_sweep = 0.0
        self.hubs: dict[str, _Hub] = {}
        self.watch_hub: _Hub | None = None
        self.watched: set[str] = set()
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.thread = threading.Thread(target=self._run_loop, name="chanlite-cluster", daemon=True)
        self.thread.start()

    # -- from any thread --

    def submit(self, call: _Call) -> None:
        self.loop.call_soon_threadsafe(self._add, call)

    def run(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # -- on the client loop --

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(
                    asyncio.gather(*asyncio.all_tasks(self.loop), return_exceptions=True)
                )
            self.loop.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def start(self) -> None:
        """Connect to every hub now, so that the first rings go out at once."""
        self._spawn(self.recheck())
        for address in self.transport.hub_addresses:
            hub = self._hub(address)
            hub.connecting = self._spawn(hub.connect())

    def _add(self, call: _Call) -> None:
        self.pending.append(call)
        if self.writer is None:
            self.writer = self._spawn(self._write())

    async def _write(self) -> None:
        try:
            while self.pending:
                batch: list[_Call] = []
                while self.pending and len(batch) < MAX_BATCH:
                    call = self.pending.popleft()
                    if call.future.set_running_or_notify_cancel():
                        batch.append(call)
                if batch:
                    await self._run_batch(batch)
        finally:
            self.writer = None

    async def _run_batch(self, batch: list[_Call]) -> None:
        transport = self.transport
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                results = await self._transact(batch, started)
            except _Retry as retry:
                attempt += 1
                elapsed = time.monotonic() - started
                pause = _pause(attempt)
                if self.closed or elapsed + pause > transport.lock_timeout:
                    logger.error(
                        "chanlite: cluster gave up after %.1f s (%d attempts): %s",
                        elapsed,
                        attempt,
                        retry.cause,
                    )
                    error: Exception = ClusterUnavailable(
                        f"chanlite: no cluster leader answered for {elapsed:.1f} s "
                        f"({attempt} attempts, lock_timeout {transport.lock_timeout} s): "
                        f"{retry.cause}; nothing was done, so it may be retried"
                    )
                    cause = retry.cause
                    if isinstance(cause, OperationalError) and _server_text(cause) == (
                        "barrier error"
                    ):
                        error = _disk_failure(cause, f"for {elapsed:.1f} s")
                    for call in batch:
                        call.future.set_exception(error)
                    return
                if not retry.busy or elapsed > QUIET_BUSY:
                    logger.warning(
                        "chanlite: cluster: %s; retry %d in %.0f ms",
                        retry.cause,
                        attempt,
                        pause * 1000,
                    )
                await asyncio.sleep(pause)
                continue
            except BaseException as error:  # not retryable: every call of the batch fails
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(_translate(error, call.name))
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            if attempt and any(not r[0] for r in results):
                logger.info("chanlite: cluster: succeeded after %d retries", attempt)
            self._ring(batch, results)
            for call, (failed, value) in zip(batch, results, strict=True):
                if failed:
                    call.future.set_exception(_translate(value, call.name))
                else:
                    call.future.set_result(value)
            return

    async def _connection(self) -> DqliteConnection:
        transport = self.transport
        if self.conn is not None and self.conn.is_connected:
            conn = self.conn
        else:
            if self.conn is not None:
                self.conn.terminate()
                self.conn = None
            if self.client is None:
                self.client = ClusterClient.from_addresses(
                    transport.addresses, timeout=transport.timeout, dial_timeout=1.0
                )
            try:
                conn = await self.client.connect(transport.database, max_attempts=1)
            except Exception as e:
                raise _Retry(e) from e
            self.conn, self.conn_clock = conn, -1
        if self.conn_clock != transport.clock_generation:
            clock = transport.clock
            try:
                await conn.fetchall("SELECT chanlite_clock(?)", [clock])
            except Exception as e:
                if _retryable(e):
                    raise _Retry(e) from e
                raise
            self.conn_clock = transport.clock_generation
        return conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    async def _transact(self, batch: list[_Call], started: float) -> list[tuple[bool, Any]]:
        """One transaction for the batch: per call (failed, result)."""
        conn = await self._connection()
        outcome = secrets.token_hex(16)
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except Exception as e:
            if _retryable(e):
                busy = isinstance(e, OperationalError) and e.code & 0xFF == SQLITE_BUSY
                if not busy:
                    self._drop()
                raise _Retry(e, busy=busy) from e
            raise
        results: list[tuple[bool, Any]] = []
        wrote = False
        try:
            if not self.configured:
                for sql, params in self.transport.settings():
                    await conn.fetchall(sql, params)
            for call in batch:
                try:
                    if call.kind == "group_send":
                        call.members = [
                            row[0]
                            for row in await conn.fetchall(
                                "SELECT channel FROM chanlite_groups WHERE group_name = ?",
                                [call.name],
                            )
                        ]
                    rows = await conn.fetchall(call.sql, call.params)
                except OperationalError as e:
                    if _is_chanlite(e):
                        results.append((True, e))  # undone by chanlite: the others go on
                        continue
                    raise
                if call.kind == "pop":
                    value: Any = [(str(r[0]), r[1], float(r[2])) for r in rows]
                    wrote = wrote or bool(value)
                else:
                    value = rows[0][0] if rows and rows[0] else None
                    wrote = True
                results.append((False, value))
            if wrote:
                await self._sweep_outcomes(conn)
                commit = "INSERT INTO chanlite_outcome(id, done_at) VALUES (?, ?)"
                if self.confirmed:
                    ids = ",".join(f"'{i}'" for i in self.confirmed)  # our own hex ids
                    commit += f"; DELETE FROM chanlite_outcome WHERE id IN ({ids})"
                params: list[Any] = [outcome, time.time()]
            else:
                commit, params = "", []
        except Exception as e:
            await self._abandon(conn)
            if _retryable(e):
                raise _Retry(e) from e
            raise
        try:
            await conn.execute(f"{commit}; COMMIT" if commit else "COMMIT", params)
        except Exception as e:
            self._drop()
            if not wrote:
                if _retryable(e):
                    raise _Retry(e) from e
                raise
            if not await self._committed(outcome, started, batch, e, conn.address):
                if _retryable(e):
                    raise _Retry(e) from e
                raise
            logger.warning(
                "chanlite: cluster: the COMMIT was cut off (%s) but had committed: delivered once",
                e,
            )
        if wrote:
            self.confirmed = [outcome]
        self.configured = True
        return results

    async def _abandon(self, conn: DqliteConnection) -> None:
        """Roll back a transaction that failed before COMMIT; a connection
        that cannot is dropped (the leader rolls back what it leaves)."""
        try:
            await conn.execute("ROLLBACK")
        except Exception:
            self._drop()

    async def _sweep_outcomes(self, conn: DqliteConnection) -> None:
        """Now and then, drop the outcome ids of clients that never came
        back for them."""
        now = time.time()
        if now - self.last_sweep < OUTCOME_SWEEP_EVERY:
            return
        self.last_sweep = now
        await conn.execute(
            "DELETE FROM chanlite_outcome WHERE done_at < ?", [now - OUTCOME_RETENTION]
        )

    async def _committed(
        self,
        outcome: str,
        started: float,
        batch: list[_Call],
        error: BaseException,
        failed_on: str,
    ) -> bool:
        """Whether the transaction with this outcome id committed, asked of
        whichever node leads now. A batch with pops asks for as long as it
        takes (their rows would be lost otherwise); one without gives up at
        lock_timeout with OutcomeUnknown."""
        patient = any(call.kind == "pop" for call in batch)
        # A leader that could not write the COMMIT to its own log may still
        # have sent it to followers, which commit it under the next leader:
        # only another leader can say that it did not commit.
        ask_another = _disk_error(error)
        attempt = 0
        while True:
            try:
                conn = await self._connection()
                rows = await conn.fetchall("SELECT 1 FROM chanlite_outcome WHERE id = ?", [outcome])
                if not rows and ask_another and conn.address == failed_on:
                    raise _Retry(error)
                return bool(rows)
            except Exception as e:
                if isinstance(e, OperationalError) and "no such table" in _server_text(e):
                    return False  # the schema itself never committed
                # A leader that cannot write cannot run the read's barrier either.
                if not isinstance(e, _Retry) and not _retryable(e) and not _disk_error(e):
                    raise
                self._drop()
                attempt += 1
                elapsed = time.monotonic() - started
                if not patient and elapsed > self.transport.lock_timeout:
                    disk = " (is a node's disk full?)" if _disk_error(error) else ""
                    raise OutcomeUnknown(
                        f"chanlite: the cluster lost the connection during COMMIT ({error}"
                        f"{disk}) and no leader could say within {self.transport.lock_timeout} "
                        "s whether it committed: the message may have been sent"
                    ) from e
                pause = _pause(attempt)
                logger.warning(
                    "chanlite: cluster: COMMIT cut off (%s); looking up its outcome, "
                    "retry %d in %.0f ms: %s",
                    error,
                    attempt,
                    pause * 1000,
                    e,
                )
                await asyncio.sleep(pause)

    # -- waking --

    def _ring(self, batch: list[_Call], results: list[tuple[bool, Any]]) -> None:
        """After a commit: ring every hub with the queues written to."""
        queues: set[str] = set()
        for call, (failed, value) in zip(batch, results, strict=True):
            if failed:
                continue
            if call.kind == "send":
                queues.add(_queue_of(call.name))
            elif call.kind == "group_send" and value:
                queues.update(_queue_of(member) for member in call.members)
        if not queues:
            return
        line = ("ring " + " ".join(sorted(queues)) + "\n").encode()
        for address in self.transport.hub_addresses:
            hub = self._hub(address)
            hub.write(line)

    def _hub(self, address: str) -> _Hub:
        hub = self.hubs.get(address)
        if hub is None:
            hub = self.hubs[address] = _Hub(self, address)
        return hub

    async def watch(self, queue: str) -> None:
        """Have a hub watch queue (acknowledged) before a receiver looks."""
        hub = self.watch_hub
        if queue in self.watched and hub is not None and hub.up:
            return
        self.watched.add(queue)
        if hub is not None and hub.up:
            try:
                await hub.watch([queue])
                return
            except (OSError, TimeoutError) as e:
                hub.lost(e)
        await self._choose_watch_hub()

    async def _choose_watch_hub(self) -> None:
        """Watch every queue on the first hub that answers, starting after
        the one that failed; then every receiver looks again (rings may
        have fallen in between)."""
        addresses = self.transport.hub_addresses
        start = 0
        if self.watch_hub is not None:
            with contextlib.suppress(ValueError):
                start = addresses.index(self.watch_hub.address) + 1
        for i in range(len(addresses)):
            hub = self._hub(addresses[(start + i) % len(addresses)])
            if not await hub.connect():
                continue
            try:
                await hub.watch(sorted(self.watched))
            except (OSError, TimeoutError) as e:
                hub.lost(e)
                continue
            if self.watch_hub is not hub:
                logger.info("chanlite: cluster: receivers wake through the hub at %s", hub.address)
            self.watch_hub = hub
            self.host.kick(None)
            return
        self.watch_hub = None
        logger.warning(
            "chanlite: cluster: no wake hub answers (%s): receivers re-check every %s s",
            ", ".join(addresses),
            self.transport.recheck,
        )

    def hub_lost(self, hub: _Hub) -> None:
        self.host.kick(None)
        if hub is self.watch_hub and not self.closed and self.watched:
            self._spawn(self._rewatch())

    async def _rewatch(self) -> None:
        attempt = 0
        while not self.closed and self.watched:
            await self._choose_watch_hub()
            if self.watch_hub is not None:
                return
            attempt += 1
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))

    async def recheck(self) -> None:
        """The slow safety net: every receiver looks again now and then."""
        while not self.closed:
            await asyncio.sleep(self.transport.recheck)
            if self.watched:
                self.host.kick(None)

    # -- closing --

    async def shutdown(self, timeout: float) -> None:
        self.closed = True
        if self.writer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.writer), timeout)
        for call in self.pending:
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(ClusterUnavailable("chanlite: the layer was closed"))
        self.pending.clear()
        for hub in self.hubs.values():
            hub.close()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def stop(self) -> None:
        """Stop the loop (after shutdown()); its thread then closes it."""
        self.loop.call_soon_threadsafe(self.loop.stop)


class _Hub:
    """A connection to one node's wake hub (on the session's loop): rings go
    out through it, and every line that comes back is a queue to look at."""

    def __init__(self, session: _Session, address: str) -> None:
        self.session = session
        self.address = address
        self.host, self.port = _split_address(address, "a wake hub address")
        self.writer: asyncio.StreamWriter | None = None
        self.connecting: asyncio.Task[bool] | None = None
        self.acks: dict[str, list[asyncio.Future[None]]] = {}
        #: Rings written while the connection was being made: sent once it is.
        self.pending: list[bytes] = []
        self.up = False
        self.failures = 0

    def write(self, line: bytes) -> None:
        """Fire and forget. To a hub not connected yet, the line goes once
        the connection is made (in the background); a hub that cannot be
        reached drops it (its watchers are moving to another hub, and look
        again when they do)."""
        if self.up and self.writer is not None:
            try:
                self.writer.write(line)
            except (OSError, RuntimeError) as e:
                self.lost(e)
            return
        if len(self.pending) < MAX_PENDING_RINGS:
            self.pending.append(line)
        if self.connecting is None or self.connecting.done():
            self.connecting = self.session._spawn(self.connect())

    async def connect(self) -> bool:
        if self.up:
            return True
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), WATCH_ACK_TIMEOUT
            )
        except (OSError, TimeoutError) as e:
            self.failures += 1
            self.pending.clear()
            if self.failures == 1:
                logger.warning("chanlite: cluster: wake hub %s: %s", self.address, e)
            return False
        if self.up:  # a concurrent connect() won
            writer.close()
            return True
        self.writer, self.up, self.failures = writer, True, 0
        pending, self.pending = self.pending, []
        writer.write(b"".join(pending))
        self.session._spawn(self._read(reader, writer))
        self.session.host.kick(None)  # rings may have been lost while it was down
        return True

    async def watch(self, queues: Sequence[str]) -> None:
        """Watch queues; return once the hub has answered ``ok watch`` for
        each: rings from then on reach this connection."""
        if not queues:
            return
        if not self.up or self.writer is None:
            raise OSError(f"wake hub {self.address} is not connected")
        loop = asyncio.get_running_loop()
        waits = []
        for queue in queues:
            fut: asyncio.Future[None] = loop.create_future()
            self.acks.setdefault(queue, []).append(fut)
            waits.append(fut)
        self.writer.write("".join(f"watch {queue}\n" for queue in queues).encode())
        await asyncio.wait_for(asyncio.gather(*waits), WATCH_ACK_TIMEOUT)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: BaseException | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                text = line.decode(errors="replace").strip()
                if text.startswith("ok watch "):
                    for fut in self.acks.pop(text[9:], ()):
                        if not fut.done():
                            fut.set_result(None)
                elif text.startswith("error"):
                    logger.warning("chanlite: cluster: wake hub %s: %s", self.address, text)
                elif text and not text.startswith(("ok ", "pong")):
                    self.session.host.kick(text)
        except (OSError, asyncio.IncompleteReadError) as e:
            error = e
        if self.writer is writer:
            self.lost(error or ConnectionResetError("closed by the hub"))

    def lost(self, error: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()
        for waits in self.acks.values():
            for fut in waits:
                if not fut.done():
                    fut.set_exception(OSError(f"wake hub {self.address} lost"))
        self.acks.clear()
        if not self.session.closed:
            logger.warning("chanlite: cluster: wake hub %s lost: %s", self.address, error)
            self.session.hub_lost(self)

    def close(self) -> None:
        self.up = False
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _HubWatch:
    """The layer's watch (chanlite.transport.Watch): notices arrive on the
    session's thread and kick receivers themselves, so collect() has nothing
    to deliver and every loop can listen."""

    def __init__(self, transport: ClusterTransport, session: _Session) -> None:
        self.transport = transport
        self.session = session

    def current(self) -> bool:
        return (
            self.transport._session is self.session
            and not self.session.closed
            and self.session.pid == os.getpid()
        )

    def collect(self) -> None:
        pass

    def listen(self, loop: asyncio.AbstractEventLoop) -> bool:
        return True

    def unlisten(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


class ClusterTransport:
    """chanlite.transport.Transport on a dqlite cluster (see the module)."""

    kicked_by_every_change = False

    def __init__(
        self,
        host: Host,
        addresses: Iterable[str],
        *,
        wake_addresses: Iterable[str] | None = None,
        database: str = "chanlite",
        timeout: float = 5.0,
        recheck: float = 5.0,
    ) -> None:
        if isinstance(addresses, str):
            raise ValueError("chanlite: 'cluster' must be a list of HOST:PORT addresses")
        self.addresses = [str(a) for a in addresses]
        if not self.addresses:
            raise ValueError("chanlite: 'cluster' needs at least one HOST:PORT address")
        for address in self.addresses:
            _split_address(address, "a cluster address")
        if wake_addresses is None:
            # A node's hub listens on the node's port + 1 unless told otherwise.
            hubs = []
            for address in self.addresses:
                node_host, port = _split_address(address, "a cluster address")
                hubs.append(f"{node_host}:{port + 1}")
        else:
            hubs = [str(a) for a in wake_addresses]
            for address in hubs:
                _split_address(address, "a wake hub address")
        self.hub_addresses = hubs
        if not recheck > 0:
            raise ValueError(f"chanlite: 'recheck' must be > 0 seconds, not {recheck!r}")
        self.host = host
        self.database = database
        self.timeout = timeout
        self.recheck = recheck
        self.clock: float | None = None
        self.clock_generation = 0
        self._session: _Session | None = None
        self._closing: list[_Session] = []
        self._lock = threading.Lock()
        self._wake_method: str | None = None

    @property
    def lock_timeout(self) -> float:
        return self.host.lock_timeout

    def settings(self) -> list[tuple[str, list[Any]]]:
        """The layer's settings, as calls that store them."""
        host = self.host
        calls: list[tuple[str, list[Any]]] = [
            ("SELECT chanlite_config(?, ?)", ["expiry", host.expiry]),
            ("SELECT chanlite_config(?, ?)", ["group_expiry", host.group_expiry]),
            ("SELECT chanlite_config(?, ?)", ["capacity", host.capacity]),
        ]
        calls += [("SELECT chanlite_capacity(?, ?)", [g, n]) for g, n in host.capacity_globs]
        return calls

    def _current(self) -> _Session:
        self.host.check_process()
        with self._lock:
            session = self._session
            if session is None or session.pid != os.getpid():
                session = self._session = _Session(self)
                session.loop.call_soon_threadsafe(session.start)
            return session

    async def _do(self, kind: str, sql: str, params: list[Any], name: str) -> Any:
        session = self._current()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        session.submit(_Call(sql, params, name, future, kind))
        return await asyncio.wrap_future(future)

    # ---- the Transport API ----

    @property
    def wake_method(self) -> str | None:
        return self._wake_method

    async def send(self, channel: str, data: bytes) -> None:
        await self._do("send", "SELECT channel_send(?, ?)", [channel, data], channel)

    async def group_send(self, group: str, data: bytes) -> int:
        return int(await self._do("group_send", "SELECT group_send(?, ?)", [group, data], group))

    async def group_add(self, group: str, channel: str) -> None:
        await self._do("other", "SELECT group_add(?, ?)", [group, channel], group)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._do("other", "SELECT group_discard(?, ?)", [group, channel], group)

    async def flush(self) -> None:
        await self._do("other", "SELECT channel_flush()", [], "")

    async def pop(self, queue: str, want: int, keep: Callable[[list[Row]], None]) -> list[Row]:
        session = self._current()
        await asyncio.wrap_future(session.run(session.watch(queue)))
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        session.submit(
            _Call(
                "SELECT channel, message, expires_at FROM channel_recv_batch(?, ?)",
                [queue, want],
                queue,
                future,
                "pop",
            )
        )
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            if future.cancel():
                raise  # never started: nothing popped
            with contextlib.suppress(Exception):
                while not future.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(asyncio.wrap_future(future))
                keep(future.result())
            raise

    def pause_before_retry(self, error: Exception, attempt: int, what: str) -> float | None:
        if not isinstance(error, ClusterUnavailable | ClusterDiskError | DqliteError):
            return None
        pause = _pause(attempt + 4)
        logger.warning("chanlite: %s: %s; retry %d in %.0f ms", what, error, attempt, pause * 1000)
        return pause

    def sent(self, queue: str | None) -> None:
        self.host.kick(queue)  # other processes: rung by the session after the commit

    async def arm(self) -> _HubWatch | None:
        session = self._current()
        if self._wake_method != "hub":
            logger.info("chanlite: receivers wake through the cluster's wake hubs")
            self._wake_method = "hub"
        return _HubWatch(self, session)

    def set_clock(self, now: float | None) -> None:
        self.clock = now
        self.clock_generation += 1

    def close_locked(self) -> None:
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                self._closing.append(session)

    async def close(self) -> None:
        with self._lock:
            closing, self._closing = self._closing, []
        for session in closing:
            if session.pid != os.getpid():
                continue
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(session.run(session.shutdown(self.close_timeout)))
            session.stop()
            await asyncio.to_thread(session.thread.join, self.close_timeout)

    @property
    def close_timeout(self) -> float:
        return self.timeout + 1

    def before_fork(self) -> None:
        pass  # nothing crosses: the child makes a session of its own

    def after_fork_in_parent(self) -> None:
        pass

    def after_fork_in_child(self) -> None:
        """The parent's session (its thread does not exist here, its sockets
        are the parent's) is left alone, unused: a new one starts on the next call."""
        self._lock = threading.Lock()  # the parent's may have been held at the fork
        self._session = None
        self._closing = []
