"""Is a chanlite database healthy? :func:`health` answers for a database
file or an open connection, check by check, each ok, warning or error::

    report = chanlite.health("channels.sqlite3")
    report.status            # Status.OK, Status.WARNING or Status.ERROR
    report.to_dict()         # for a JSON health endpoint

The checks:

``database``
    The file exists, is a SQLite database, and can be written: a write to
    the header is made and rolled back inside ``BEGIN IMMEDIATE``, so the
    write lock is held for microseconds and nothing is left behind (no
    message, no counter, no bell). Error if any of that fails or the write
    lock is not had within ``timeout``; warning if it took longer than
    ``lock_wait_warning``.
``extension``
    chanlite loads; its version.
``journal_mode``
    Warning unless WAL (without it readers and the writer block each other).
``wal_size``
    The ``-wal`` file: a WAL that keeps growing means checkpoints cannot
    finish (a reader that never ends its transaction).
``queues``
    The deepest queues against their capacity: a queue at capacity refuses
    sends (ChannelFull), so it is an error; one nearly there, a warning.
``oldest_message``
    How long the oldest unexpired message has waited: consumers that fall
    behind (or are gone) leave messages waiting until they expire.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import chanlite
from chanlite import monitor

__all__ = ["Check", "HealthReport", "Status", "Thresholds", "health"]

MiB = 1024 * 1024


class Status(str, enum.Enum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"ok": 0, "warning": 1, "error": 2}[self.value]


@dataclass(frozen=True)
class Thresholds:
    """Where a check turns warning or error; None switches that level off."""

    #: Seconds to wait for the write lock before warning (error: not had within ``timeout``).
    lock_wait_warning: float | None = 0.5
    wal_size_warning: int | None = 64 * MiB
    wal_size_error: int | None = 1024 * MiB
    #: A queue's depth as a fraction of its capacity.
    queue_fill_warning: float | None = 0.8
    queue_fill_error: float | None = 1.0
    #: Absolute depths, for deployments that want them (off by default).
    queue_depth_warning: int | None = None
    queue_depth_error: int | None = None
    #: Seconds the oldest unexpired message has waited.
    oldest_age_warning: float | None = 30.0
    oldest_age_error: float | None = 120.0

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Thresholds:
        """Thresholds from a settings dict, refusing unknown names."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"chanlite: unknown health threshold(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**values)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    summary: str
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "summary": self.summary,
            "value": self.value,
        }


@dataclass
class HealthReport:
    database: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> Status:
        worst = Status.OK
        for check in self.checks:
            if check.status.rank > worst.rank:
                worst = check.status
        return worst

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "database": self.database,
            "checks": [c.to_dict() for c in self.checks],
        }


def _level(value: float, warning: float | None, error: float | None) -> Status:
    if error is not None and value >= error:
        return Status.ERROR
    if warning is not None and value >= warning:
        return Status.WARNING
    return Status.OK


def health(
    database: str | os.PathLike[str] | sqlite3.Connection,
    *,
    thresholds: Thresholds | None = None,
    timeout: float = 2.0,
    deepest: int = 5,
    missing_ok: bool = False,
) -> HealthReport:
    """Check a chanlite database: a file's path (it is opened for the check
    and closed after; a missing file is an error, never created), a ``file:``
    URI, or an open ``sqlite3.Connection`` (chanlite is loaded into it if it
    lacks it; its busy timeout applies). ``timeout`` is how long to wait for
    the write lock, ``deepest`` how many of the deepest queues to report.
    ``missing_ok``: a file not created yet, in a writable directory, is
    healthy (a channel layer creates its database on first use)."""
    limits = thresholds or Thresholds()
    if isinstance(database, sqlite3.Connection):
        conn, owned = database, False
        report = HealthReport(monitor.database_file(conn))
    else:
        name = os.fspath(database)
        report = HealthReport(name if name.startswith("file:") else os.path.abspath(name))
        if missing_ok and _creatable(name):
            report.checks.append(
                Check("database", Status.OK, "not created yet: created on first use", None)
            )
            return report
        try:
            conn, owned = monitor.open_database(database, timeout=timeout, extension=False), True
        except (OSError, sqlite3.Error) as e:
            report.checks.append(Check("database", Status.ERROR, _reason(e)))
            return report
        except chanlite.ExtensionUnavailable as e:
            report.checks.append(Check("extension", Status.ERROR, str(e)))
            return report
    try:
        report.checks.append(_check_database(conn, limits, timeout))
        extension = _check_extension(conn)
        report.checks.append(extension)
        report.checks.extend(_check_files(conn, limits))
        if extension.status is not Status.ERROR:
            report.checks.extend(_check_queues(conn, limits, deepest))
    finally:
        if owned:
            conn.close()
    return report


def _creatable(name: str) -> bool:
    """A database file that does not exist yet, but can be created."""
    if name.startswith("file:") or os.path.exists(name):
        return False
    directory = os.path.dirname(os.path.abspath(name))
    return os.path.isdir(directory) and os.access(directory, os.W_OK)


def _reason(error: BaseException) -> str:
    text = str(error).removeprefix("chanlite: ")
    if isinstance(error, sqlite3.Error):
        return f"cannot use the database: {text}"
    return text


def _check_database(conn: sqlite3.Connection, limits: Thresholds, timeout: float) -> Check:
    if conn.in_transaction:
        return Check(
            "database",
            Status.WARNING,
            "reachable; writability not checked: the connection is inside a transaction",
        )
    # Setting user_version to its own value writes the header page, which a
    # read-only database refuses; ROLLBACK undoes it. BEGIN IMMEDIATE alone
    # would not do: SQLite grants it on a read-only file.
    started = time.monotonic()
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        waited = time.monotonic() - started
        if "locked" in str(e) or "busy" in str(e):
            return Check(
                "database",
                Status.ERROR,
                f"write lock not available within {waited:.1f} s (another connection "
                "holds it): sends and receives are stalled",
                {"lock_wait": waited},
            )
        return Check("database", Status.ERROR, _reason(e))
    waited = time.monotonic() - started
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute(f"PRAGMA user_version = {int(version)}")
    except sqlite3.Error as e:
        return Check("database", Status.ERROR, f"not writable: {_reason(e)}")
    finally:
        conn.execute("ROLLBACK")
    status = _level(waited, limits.lock_wait_warning, None)
    summary = f"reachable and writable (write lock in {waited * 1000:.1f} ms)"
    if status is not Status.OK:
        summary += ": writers hold the lock long"
    return Check("database", status, summary, {"lock_wait": waited})


def _check_extension(conn: sqlite3.Connection) -> Check:
    try:
        version = conn.execute("SELECT chanlite_version()").fetchone()[0]
    except sqlite3.OperationalError:
        try:
            chanlite.load(conn)
            version = conn.execute("SELECT chanlite_version()").fetchone()[0]
        except (chanlite.ExtensionUnavailable, sqlite3.Error) as e:
            return Check("extension", Status.ERROR, f"cannot load chanlite: {e}")
    return Check("extension", Status.OK, f"chanlite {version}", str(version))


def _check_files(conn: sqlite3.Connection, limits: Thresholds) -> list[Check]:
    info = monitor.files(conn)
    checks = []
    mode = info.journal_mode.lower()
    if not info.path:  # in memory (test mode): no journal file, no WAL
        return [Check("journal_mode", Status.OK, f"in memory (journal_mode={mode})", mode)]
    checks.append(
        Check(
            "journal_mode",
            Status.OK if mode == "wal" else Status.WARNING,
            f"journal_mode={mode}"
            + ("" if mode == "wal" else ": readers and the writer block each other; use WAL"),
            mode,
        )
    )
    status = _level(info.wal_size, limits.wal_size_warning, limits.wal_size_error)
    summary = (
        f"WAL {monitor.format_size(info.wal_size)}, database {monitor.format_size(info.file_size)}"
    )
    if status is not Status.OK:
        summary += ": checkpoints are not keeping up (a long-running reader?)"
    checks.append(
        Check("wal_size", status, summary, {"wal_size": info.wal_size, "file_size": info.file_size})
    )
    return checks


def _check_queues(conn: sqlite3.Connection, limits: Thresholds, deepest: int) -> list[Check]:
    rows = monitor.channels(conn)
    depths: dict[str, int] = {}
    for row in rows:
        queue = monitor.queue_of(row.channel)
        depths[queue] = depths.get(queue, 0) + row.depth
    queues = []
    for queue, depth in depths.items():
        capacity = monitor.capacity_of(conn, queue)
        fill = depth / capacity if capacity > 0 else float("inf")
        status = _level(fill, limits.queue_fill_warning, limits.queue_fill_error)
        by_depth = _level(depth, limits.queue_depth_warning, limits.queue_depth_error)
        if by_depth.rank > status.rank:
            status = by_depth
        queues.append((status.rank, fill, depth, queue, capacity, status))
    queues.sort(key=lambda q: (-q[0], -q[1], -q[2], q[3]))
    top = [
        {"queue": q, "depth": d, "capacity": c, "status": s.value}
        for _, _, d, q, c, s in queues[:deepest]
    ]
    worst = queues[0][5] if queues else Status.OK
    if not queues:
        summary = "no messages queued"
    else:
        _, fill, depth, queue, capacity, _ = queues[0]
        summary = f"{len(queues)} queue(s); fullest {queue}: {depth} of {capacity}"
        if worst is Status.ERROR:
            summary += " (full: sends to it fail)"
        elif worst is Status.WARNING:
            summary += " (nearly full: its consumers are falling behind)"
    checks = [Check("queues", worst, summary, top)]

    oldest = max(rows, key=lambda r: r.oldest_age, default=None)
    if oldest is None:
        checks.append(Check("oldest_message", Status.OK, "no messages queued", None))
    else:
        status = _level(oldest.oldest_age, limits.oldest_age_warning, limits.oldest_age_error)
        summary = f"oldest message waited {oldest.oldest_age:.1f} s on {oldest.channel}"
        if status is not Status.OK:
            summary += ": its consumer is slow or gone"
        checks.append(
            Check(
                "oldest_message",
                status,
                summary,
                {"channel": oldest.channel, "age": oldest.oldest_age},
            )
        )
    return checks
