"""Read-only views of a chanlite database, for the health check and the
admin command: its channels, groups, files, metrics and dead letters.

Everything here reads through chanlite's public SQL (``chanlite_channels``,
``chanlite_groups``, ``chanlite_stats``, ``chanlite_dead``) and takes no
write lock, so looking at a busy layer never slows it down. The metrics and
dead letters are :mod:`chanlite.metrics`'s: :func:`stats` is
``chanlite.stats`` and :func:`dead_letters` wraps ``chanlite.dead_letters``
in the admin command's convention (``limit`` 0: all).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

import chanlite
from chanlite import metrics
from chanlite.metrics import ChannelStats, DeadLetter, NotAvailable, _has_table, stats

__all__ = [
    "ChannelRow",
    "ChannelStats",
    "DeadLetter",
    "Files",
    "GroupRow",
    "NotAvailable",
    "capacity_of",
    "channels",
    "database_file",
    "dead_letters",
    "dead_letters_kept",
    "files",
    "format_age",
    "format_size",
    "groups",
    "open_database",
    "queue_of",
    "stats",
]


@dataclass(frozen=True)
class ChannelRow:
    channel: str
    depth: int
    oldest_age: float  # seconds since its oldest unexpired message was sent


@dataclass(frozen=True)
class GroupRow:
    group: str
    members: int
    next_expiry: float  # seconds until its first membership expires


@dataclass(frozen=True)
class Files:
    path: str
    file_size: int
    wal_size: int
    page_size: int
    page_count: int
    free_pages: int
    auto_vacuum: str  # none, full or incremental
    journal_mode: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_database(
    database: str | os.PathLike[str], *, timeout: float = 5.0, extension: bool = True
) -> sqlite3.Connection:
    """A connection (with chanlite unless ``extension`` is False) to an
    existing database file, in autocommit mode. It never creates one: a
    mistyped path is an error, not a new empty database. A ``file:`` URI is
    opened as it is."""
    name = os.fspath(database)
    if name.startswith("file:"):  # a URI, e.g. test mode's shared in-memory database
        uri = name
    else:
        path = os.path.abspath(name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"chanlite: no database at {path}")
        if os.path.isdir(path):
            raise IsADirectoryError(f"chanlite: {path} is a directory, not a database")
        uri = "file:" + urllib.parse.quote(path) + "?mode=rw"
    conn = sqlite3.connect(
        uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA schema_version").fetchone()  # "file is not a database"
        if extension:
            chanlite.load(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def database_file(conn: sqlite3.Connection) -> str | None:
    """The main database's file, or None for an in-memory or temporary one."""
    name = conn.execute("PRAGMA database_list").fetchone()[2]
    return str(name) if name else None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


_AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def files(conn: sqlite3.Connection) -> Files:
    """Sizes of the database file and its WAL, and the page figures behind them."""
    path = database_file(conn) or ""

    def pragma(name: str) -> Any:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]

    return Files(
        path=path,
        file_size=_size(path) if path else 0,
        wal_size=_size(path + "-wal") if path else 0,
        page_size=int(pragma("page_size")),
        page_count=int(pragma("page_count")),
        free_pages=int(pragma("freelist_count")),
        auto_vacuum=_AUTO_VACUUM.get(int(pragma("auto_vacuum")), "unknown"),
        journal_mode=str(pragma("journal_mode")),
    )


def channels(conn: sqlite3.Connection) -> list[ChannelRow]:
    """Every channel with unexpired messages, deepest first."""
    rows = conn.execute(
        "SELECT channel, depth, oldest_age FROM chanlite_channels "
        "ORDER BY depth DESC, oldest_age DESC, channel"
    ).fetchall()
    return [ChannelRow(str(c), int(d), float(a)) for c, d, a in rows]


def groups(conn: sqlite3.Connection) -> list[GroupRow]:
    """Every group with live memberships, largest first."""
    rows = conn.execute(
        "SELECT group_name, count(*), min(expires_in) FROM chanlite_groups "
        "GROUP BY group_name ORDER BY count(*) DESC, group_name"
    ).fetchall()
    return [GroupRow(str(g), int(n), float(e)) for g, n, e in rows]


def queue_of(channel: str) -> str:
    """The queue a channel's capacity counts over: ``prefix!`` for a
    process-specific ``prefix!local`` name, else the channel itself."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def capacity_of(conn: sqlite3.Connection, channel: str) -> int:
    """The capacity a send to ``channel`` is held to (its first matching
    pattern, else the database's ``capacity``), as the extension decides it."""
    if _has_table(conn, "chanlite_capacity"):
        row = conn.execute(
            "SELECT capacity FROM main.chanlite_capacity WHERE ? GLOB pattern ORDER BY id LIMIT 1",
            (channel,),
        ).fetchone()
        if row is not None:
            return int(row[0])
    return int(conn.execute("SELECT chanlite_config('capacity')").fetchone()[0])


def dead_letters(
    conn: sqlite3.Connection, *, limit: int = 0, channel: str | None = None
) -> list[DeadLetter]:
    """``chanlite.dead_letters``, most recently dead first, ``limit`` 0 (the
    admin command's ``--limit 0``) meaning all."""
    return metrics.dead_letters(conn, channel, limit if limit > 0 else None)


def dead_letters_kept(conn: sqlite3.Connection) -> int | None:
    """The ``dead_letters`` setting (the most dead letters kept; 0: off), or
    None where the extension has no such setting."""
    try:
        return int(conn.execute("SELECT chanlite_config('dead_letters')").fetchone()[0])
    except sqlite3.OperationalError:
        return None


def format_age(seconds: float | None) -> str:
    """A duration a person reads at a glance: 0.4s, 3.2s, 42s, 5m12s, 3h05m, 2d4h."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def format_size(n: int) -> str:
    """Bytes in binary units: 512 B, 4.0 KiB, 27.3 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
