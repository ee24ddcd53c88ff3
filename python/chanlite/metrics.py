"""Traffic counters and dead letters, from Python.

:func:`stats` reads the extension's ``chanlite_stats`` table and
:func:`dead_letters` its ``chanlite_dead`` table (see the README's Operations
section). Both take an open connection with chanlite loaded, or the path of
a database file (opened read-only for the call)::

    import chanlite
    for row in chanlite.stats("channels.sqlite3"):
        print(row.channel or "(total)", row.sent, row.received, row.depth)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChannelStats", "DeadLetter", "dead_letters", "stats"]

Source = sqlite3.Connection | str | os.PathLike[str]


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


def stats(source: Source) -> list[ChannelStats]:
    """Every row of ``chanlite_stats``: one per channel with counters, by
    name, then the totals (``channel is None``, always present)."""
    with _connection(source) as conn:
        rows = conn.execute(
            "SELECT channel, sent, received, expired, full_send, full_group_send, depth, "
            "oldest_age FROM chanlite_stats"
        ).fetchall()
    return [ChannelStats(*row) for row in rows]


def dead_letters(source: Source, channel: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """The newest ``limit`` dead letters, newest first; only ``channel``'s
    (its full name) if given. Empty when dead letters were never kept."""
    sql = "SELECT id, channel, reason, sent_at, dead_at, body FROM chanlite_dead"
    params: tuple[object, ...] = ()
    if channel is not None:
        sql += " WHERE channel = ?"
        params = (channel,)
    sql += " ORDER BY id DESC LIMIT ?"
    with _connection(source) as conn:
        try:
            rows = conn.execute(sql, (*params, limit)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table: chanlite_dead" in str(e):
                return []  # no chanlite tables yet, or made by an older chanlite
            raise
    return [DeadLetter(*row) for row in rows]
