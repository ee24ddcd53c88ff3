"""Running the layer's contract tests on every transport: a database file,
the in-memory test database, and a dqlite cluster (see TRANSPORTS).

A test takes ``db_path`` from a fixture made with transport_db_path() and
builds its layers with new_layer(db_path, **config); on the cluster,
``db_path`` is a ClusterDatabase (a database of the test's own on the
session's cluster, the ``dqlite_cluster`` fixture of conftest.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import chanlite
from chanlite.layer import SQLiteChannelLayer


class ClusterDatabase(str):
    """What a contract test's ``db_path`` is on the cluster: a database of
    its own on the session's 3-node cluster. A str, so that tests which only
    pass it on to new_layer() run unchanged."""

    addresses: list[str]
    database: str

    def __new__(cls, addresses: list[str], database: str) -> ClusterDatabase:
        self = super().__new__(cls, f"dqlite:{database}")
        self.addresses, self.database = addresses, database
        return self


def new_layer(where: str, **config: Any) -> SQLiteChannelLayer:
    """A layer on a database file, an in-memory test database, or (for a
    ClusterDatabase) the cluster: the same class and CONFIG otherwise."""
    if isinstance(where, ClusterDatabase):
        return SQLiteChannelLayer(
            cluster=where.addresses, cluster_options={"database": where.database}, **config
        )
    return SQLiteChannelLayer(path=where, **config)


#: The transports a contract test runs on: a file, the in-memory test
#: database, and the cluster (marked, so that only the cluster step runs it).
TRANSPORTS = ["file", "memory", pytest.param("cluster", marks=pytest.mark.cluster)]


def transport_db_path(request: pytest.FixtureRequest, tmp_path: Path, memory_name: str) -> str:
    """The ``db_path`` of a contract test for request.param (see TRANSPORTS)."""
    if request.param == "memory":
        return f"file:{memory_name}-{uuid.uuid4().hex}?mode=memory&cache=shared"
    if request.param == "cluster":
        cluster = request.getfixturevalue("dqlite_cluster")
        return ClusterDatabase(cluster.addresses, f"t{uuid.uuid4().hex[:12]}")
    return str(tmp_path / "layer.sqlite3")


class ClusterSQL:
    """sqlite3.Connection's execute() on a cluster database, for tests that
    look at what the layer stored: each statement in a transaction of its
    own on the leader (a write in autocommit is refused in a node)."""

    def __init__(self, where: ClusterDatabase, cluster: Any) -> None:
        import wire

        self.conn = wire.Connection(cluster.leader().address)
        self.db = self.conn.open(where.database)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> ClusterSQL:
        if sql.lstrip().upper().startswith("PRAGMA"):
            self.rows = self.conn.query(self.db, sql, *params)
            return self
        self.conn.exec(self.db, "BEGIN IMMEDIATE")
        try:
            self.rows = self.conn.query(self.db, sql, *params)
        except BaseException:
            self.conn.exec(self.db, "ROLLBACK")
            raise
        self.conn.exec(self.db, "COMMIT")
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self.rows)

    def close(self) -> None:
        self.conn.close()


def sql_connection(request: pytest.FixtureRequest, db_path: str) -> Any:
    """A plain connection to the layer's database: sqlite3 with chanlite, or
    on the cluster a ClusterSQL."""
    if isinstance(db_path, ClusterDatabase):
        return ClusterSQL(db_path, request.getfixturevalue("dqlite_cluster"))
    return chanlite.connect(db_path, uri=True, isolation_level=None)
