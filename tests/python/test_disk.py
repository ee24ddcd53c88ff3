"""The database the layer makes stays small: incremental auto-vacuum, pages
given back after a burst, and a journal_size_limit on every connection the
package configures. (The burst-then-shrink and WAL bounds in C:
tests/c/disk.c.)"""

from __future__ import annotations

import os
import sqlite3

from django.db import connection

import chanlite
from chanlite.layer import SQLiteChannelLayer


def _size(path: str) -> int:
    return os.path.getsize(path)


async def test_layer_database_is_incremental_and_gives_pages_back(
    db_path: str, sql: sqlite3.Connection
) -> None:
    layer = SQLiteChannelLayer(path=db_path, capacity=5000)
    try:
        for i in range(3000):
            await layer.send("burst", {"type": "m", "n": i, "payload": b"x" * 1024})
        peak = _size(db_path) + _size(db_path + "-wal")
        for i in range(3000):
            assert (await layer.receive("burst"))["n"] == i
        assert sql.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        # Free pages beyond 1 MB went back to the file system as the
        # messages were received; the checkpoint shrinks the file.
        free = sql.execute("PRAGMA freelist_count").fetchone()[0]
        page = sql.execute("PRAGMA page_size").fetchone()[0]
        assert free * page <= 1024 * 1024 + 64 * page
        sql.execute("PRAGMA wal_checkpoint")
        assert peak > 3 * 1024 * 1024
        assert _size(db_path) < 2 * 1024 * 1024
    finally:
        await layer.close()


async def test_layer_connections_limit_the_wal(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path)
    try:
        await layer.send("a", {"type": "m"})
        conn = layer.transport._connection()
        limit = conn.execute("PRAGMA journal_size_limit").fetchone()[0]
        assert limit == chanlite.JOURNAL_SIZE_LIMIT
    finally:
        await layer.flush()
        await layer.close()


def test_django_backend_limits_the_wal() -> None:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_size_limit")
        assert cursor.fetchone()[0] == chanlite.JOURNAL_SIZE_LIMIT
