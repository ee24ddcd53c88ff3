"""chanlite.stats() and chanlite.dead_letters(): the extension's counters and
dead letters from Python, and what the channel layer's traffic does to them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest
from channels.exceptions import ChannelFull

import chanlite
from chanlite import ChannelStats, DeadLetter, monitor
from chanlite.layer import SQLiteChannelLayer
from chanlite.metrics import NotAvailable


def test_stats_of_a_new_database_is_the_zero_totals(sql: sqlite3.Connection) -> None:
    assert chanlite.stats(sql) == [ChannelStats(None, 0, 0, 0, 0, 0, 0, None)]
    assert chanlite.dead_letters(sql) == []


def test_stats_counts_per_channel_and_in_total(sql: sqlite3.Connection) -> None:
    sql.execute("SELECT chanlite_clock(1000)")
    sql.execute("SELECT chanlite_capacity('tiny', 1)")
    for channel in ("a", "a", "b", "tiny"):
        sql.execute("SELECT channel_send(?, 'm')", (channel,))
    with pytest.raises(sqlite3.IntegrityError, match="channel full: tiny"):
        sql.execute("SELECT channel_send('tiny', 'refused')")
    assert sql.execute("SELECT channel_recv('a')").fetchone() == ("m",)
    sql.execute("SELECT chanlite_clock(1004.5)")

    rows = chanlite.stats(sql)
    assert rows == [
        ChannelStats(
            "a",
            sent=2,
            received=1,
            expired=0,
            full_send=0,
            full_group_send=0,
            depth=1,
            oldest_age=4.5,
        ),
        ChannelStats("b", 1, 0, 0, 0, 0, 1, 4.5),
        ChannelStats("tiny", 1, 0, 0, 1, 0, 1, 4.5),
        ChannelStats(None, 4, 1, 0, 1, 0, 3, 4.5),
    ]
    assert all(isinstance(r.sent, int) for r in rows)


def test_stats_from_a_path_reads_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    sqlite3.connect(path).close()  # an empty database file
    assert chanlite.stats(path) == [ChannelStats(None, 0, 0, 0, 0, 0, 0, None)]
    assert chanlite.dead_letters(str(path)) == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    conn.close()


def test_dead_letters_newest_first_filtered_and_limited(sql: sqlite3.Connection) -> None:
    sql.execute("SELECT chanlite_clock(1000)")
    sql.execute("SELECT chanlite_config('dead_letters', 10)")
    sql.execute("SELECT chanlite_capacity('tiny', 0)")
    sql.execute("SELECT channel_send('short', 'expires')")
    for body in ("r1", b"r2", "r3"):
        with pytest.raises(sqlite3.IntegrityError):
            sql.execute("SELECT channel_send('tiny', ?)", (body,))
    sql.execute("SELECT chanlite_clock(1100)")
    assert sql.execute("SELECT channel_trim()").fetchone() == (1,)

    letters = chanlite.dead_letters(sql)
    assert [(d.channel, d.reason, d.body) for d in letters] == [
        ("short", "expired", "expires"),
        ("tiny", "full", "r3"),
        ("tiny", "full", b"r2"),
        ("tiny", "full", "r1"),
    ]
    assert letters[0] == DeadLetter(letters[0].id, "short", "expired", 1000.0, 1060.0, "expires")
    assert [d.body for d in chanlite.dead_letters(sql, channel="tiny", limit=2)] == ["r3", b"r2"]
    assert chanlite.dead_letters(sql, channel="nowhere") == []


def test_dead_letters_order_by_when_they_died_not_when_they_were_kept(
    sql: sqlite3.Connection,
) -> None:
    """An expired message is kept when a call removes it, not when it
    expires: a receive removes the expired head of its own channel only, and
    a later channel_trim() the rest. The most recently dead comes first."""
    sql.execute("SELECT chanlite_clock(1000)")
    sql.execute("SELECT chanlite_config('dead_letters', 100)")
    sql.execute("SELECT channel_send('a', 'expired at 1060')")
    sql.execute("SELECT chanlite_clock(1010)")
    sql.execute("SELECT channel_send('b', 'expired at 1070')")
    sql.execute("SELECT chanlite_clock(1100)")
    assert sql.execute("SELECT channel_recv('b')").fetchone() == (None,)
    sql.execute("SELECT channel_trim()")
    kept = sql.execute("SELECT body FROM chanlite_dead ORDER BY id").fetchall()
    assert kept == [("expired at 1070",), ("expired at 1060",)]

    letters = chanlite.dead_letters(sql)
    assert [(d.channel, d.dead_at) for d in letters] == [("b", 1070.0), ("a", 1060.0)]
    assert chanlite.dead_letters(sql, limit=1) == letters[:1]


def test_dead_letters_limit_none_is_all_and_the_admin_command_reads_the_same(
    sql: sqlite3.Connection,
) -> None:
    sql.execute("SELECT chanlite_config('dead_letters', 1000)")
    sql.execute("SELECT chanlite_capacity('tiny', 0)")
    for i in range(150):
        with pytest.raises(sqlite3.IntegrityError):
            sql.execute("SELECT channel_send('tiny', ?)", (f"r{i}",))
    assert len(chanlite.dead_letters(sql)) == 100  # the default limit
    every = chanlite.dead_letters(sql, limit=None)
    assert [d.body for d in every] == [f"r{i}" for i in reversed(range(150))]
    # monitor (chanlite stats / chanlite dead) is a wrapper: same rows, same order
    assert monitor.dead_letters(sql) == every  # its limit 0: all
    assert monitor.dead_letters(sql, limit=5, channel="tiny") == every[:5]
    assert monitor.stats(sql) == chanlite.stats(sql)


def test_dead_letters_of_tables_older_than_dead_letters_are_not_available(
    sql: sqlite3.Connection,
) -> None:
    """Tables made by a chanlite from before dead letters: none can have been
    kept, and the error says so, until a write upgrades the tables."""
    sql.execute("SELECT channel_send('chat', 'm')")
    sql.execute("DROP TABLE chanlite_dead")
    with pytest.raises(NotAvailable, match="chanlite: dead letters are not available"):
        chanlite.dead_letters(sql)
    with pytest.raises(NotAvailable, match="any write upgrades it"):
        monitor.dead_letters(sql)
    sql.execute("SELECT channel_trim()")
    assert chanlite.dead_letters(sql) == []


async def test_the_layer_traffic_is_counted(
    layer: SQLiteChannelLayer, sql: sqlite3.Connection
) -> None:
    """The layer's sends, ChannelFull refusals, skipped group members and
    receives show in stats(); a refused message is kept as a dead letter, in
    the layer's encoding."""
    sql.execute("SELECT chanlite_config('dead_letters', 100)")
    for i in range(3):  # capacity 3
        await layer.send("orders", {"type": "order", "n": i})
    with pytest.raises(ChannelFull):
        await layer.send("orders", {"type": "order", "n": 3})
    await layer.group_add("room", "orders")
    await layer.group_send("room", {"type": "chat", "text": "skipped"})

    (orders,) = [r for r in chanlite.stats(sql) if r.channel == "orders"]
    assert (orders.sent, orders.received, orders.full_send, orders.full_group_send) == (3, 0, 1, 1)
    assert orders.depth == 3

    bodies = [msgpack.unpackb(d.body) for d in chanlite.dead_letters(sql, channel="orders")]
    assert bodies == [{"type": "chat", "text": "skipped"}, {"type": "order", "n": 3}]

    # A receive pops a batch into the layer's buffer: what it took is received.
    assert (await layer.receive("orders"))["n"] == 0
    (orders,) = [r for r in chanlite.stats(sql) if r.channel == "orders"]
    assert orders.received >= 1
    assert orders.received + orders.depth == 3
