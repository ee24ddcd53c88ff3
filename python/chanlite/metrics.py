"""Traffic counters and dead letters, from Python.

:func:`stats` reads the extension's ``chanlite_stats`` table and
:func:`dead_letters` its ``chanlite_dead`` table (see docs/operations/metrics.md
and docs/operations/dead-letters.md). Both take an open connection with
chanlite loaded, or the path of a database file (opened read-only for the
call)::

    import chanlite
    for row in chanlite.stats("channels.sqlite3"):
        print(row.channel or "(total)", row.sent, row.received, row.depth)

This module is the one definition of both queries: the admin command
(:mod:`chanlite.monitor`, ``chanlite stats`` and ``chanlite dead``) calls
these functions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChannelStats", "DeadLetter", "NotAvailable", "dead_letters", "stats"]

Source = sqlite3.Connection | str | os.PathLike[str]


class NotAvailable(sqlite3.OperationalError):
    """The database or its extension lacks a feature: ``chanlite_stats`` (an
    extension from before metrics is loaded) or ``chanlite_dead`` (the
    database's chanlite tables were made by a chanlite from before dead
    letters; any write upgrades them)."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """One row of ``chanlite_stats``: a channel's counters, or the totals
    (``channel is None``). Process-specific channels are counted per
    ``prefix!``."""

    channel: str | None
    sent: int
    """Messages stored."""
    received: int
    """Messages taken by a receive."""
    expired: int
    """Messages that expired unread and were removed."""
    full_send: int
    """Sends refused because the channel was full."""
    full_group_send: int
    """group_send deliveries skipped because the member was full."""
    depth: int
    """Unexpired messages queued now."""
    oldest_age: float | None
    """Seconds since the oldest of them was sent; None when there are none."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One row of ``chanlite_dead``: a message that expired unread
    (``reason == "expired"``) or that a full channel refused (``"full"``)."""

    id: int
    channel: str
    reason: str
    sent_at: float
    dead_at: float
    """When it expired, or when it was refused (Unix seconds)."""
    body: bytes | str
    """The message as sent (the channel layer's are msgpack bytes)."""


@contextmanager
def _connection(source: Source) -> Iterator[sqlite3.Connection]:
    if isinstance(source, sqlite3.Connection):
        yield source
        return
    # Imported here: the package's __init__ imports this module.
    from chanlite import connect

    conn = connect(f"{Path(source).resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _missing(error: sqlite3.Error, table: str) -> bool:
    return f"no such table: {table}" in str(error)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def stats(source: Source) -> list[ChannelStats]:
    """Every row of ``chanlite_stats``, in the extension's order: one per
    channel with counters, by name, then the totals (``channel is None``,
    always present). Raises :class:`NotAvailable` where the loaded extension
    has no ``chanlite_stats``."""
    with _connection(source) as conn:
        try:
            rows = conn.execute(
                "SELECT channel, sent, received, expired, full_send, full_group_send, depth, "
                "oldest_age FROM chanlite_stats"
            ).fetchall()
        except sqlite3.OperationalError as e:
            if _missing(e, "chanlite_stats"):
                raise NotAvailable(
                    "chanlite: metrics are not available in this database/extension "
                    f"(chanlite_stats: {e}); they need a chanlite with chanlite_stats"
                ) from e
            raise
    return [ChannelStats(*row) for row in rows]


def dead_letters(
    source: Source, channel: str | None = None, limit: int | None = 100
) -> list[DeadLetter]:
    """The ``limit`` most recently dead letters (``None``: all), most recently
    dead first (by ``dead_at``, then by ``id``: a message that expired is
    kept when a later call removes it, after refusals that came later); only
    ``channel``'s (its full name) if given. Empty where nothing was ever sent
    (no chanlite tables). Raises :class:`NotAvailable` where the chanlite
    tables predate dead letters: none can have been kept there."""
    sql = "SELECT id, channel, reason, sent_at, dead_at, body FROM main.chanlite_dead"
    params: list[object] = []
    if channel is not None:
        sql += " WHERE channel = ?"
        params.append(channel)
    sql += " ORDER BY dead_at DESC, id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    with _connection(source) as conn:
        try:
            rows = conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if not _missing(e, "main.chanlite_dead"):
                raise
            if not _has_table(conn, "chanlite_message"):
                return []  # no chanlite tables yet: nothing was ever sent
            raise NotAvailable(
                "chanlite: dead letters are not available in this database/extension "
                "(it has no chanlite_dead table: an extension older than dead letters made it; "
                "any write upgrades it)"
            ) from e
    return [DeadLetter(*row) for row in rows]
