"""The extension's SQL API from Python (a second language checking it), and
the package's loading functions."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import chanlite


@pytest.fixture
def conns(db_path: str) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    a = chanlite.connect(db_path, isolation_level=None)
    b = chanlite.connect(db_path, isolation_level=None)
    for conn in (a, b):
        conn.execute("PRAGMA journal_mode=WAL")
    yield a, b
    a.close()
    b.close()


def one(conn: sqlite3.Connection, sql: str, *params: object) -> object:
    return conn.execute(sql, params).fetchone()[0]


def test_path_and_version() -> None:
    assert Path(chanlite.path()).exists()
    conn = chanlite.connect(":memory:")
    assert str(one(conn, "SELECT chanlite_version()")).startswith("v")
    conn.close()


def test_path_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHANLITE_EXTENSION", str(tmp_path / "elsewhere.so"))
    assert chanlite.path() == str(tmp_path / "elsewhere.so")


LOAD_INTO_OPEN = """
import sqlite3, sys, chanlite
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE app(x)")  # opened and used before loading
try:
    conn.execute("SELECT chanlite_version()")
    raise SystemExit("chanlite was there before load()")
except sqlite3.OperationalError:
    pass
chanlite.load(conn)
assert conn.execute("SELECT channel_send('loaded', 'yes')").fetchone()[0] == 1
assert conn.execute("SELECT channel_recv('loaded')").fetchone()[0] == "yes"
other = sqlite3.connect(":memory:")
try:  # load() touches only that connection
    other.execute("SELECT chanlite_version()")
    raise SystemExit("load() loaded chanlite into every connection")
except sqlite3.OperationalError:
    pass
conn.close()
try:
    chanlite.load(conn)
    raise SystemExit("load() of a closed connection did not fail")
except sqlite3.ProgrammingError:
    pass
print("ok")
"""


def test_load_into_open_connection(db_path: str) -> None:
    """In a fresh process, where nothing registered chanlite before."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_INTO_OPEN, db_path], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip() == "ok"


def test_text_and_blob_round_trip(conns: tuple[sqlite3.Connection, sqlite3.Connection]) -> None:
    a, b = conns
    blob = bytes(range(256)) * 4096  # 1 MiB with NULs
    samples: list[str | bytes] = ["hello", "", "ünïcödé ✓", "123", b"", b"\x00abc\x00", blob]
    for sample in samples:
        one(a, "SELECT channel_send('rt', ?)", sample)
    for sample in samples:
        got = one(b, "SELECT channel_recv('rt')")
        assert type(got) is type(sample)
        assert got == sample
    assert one(b, "SELECT channel_recv('rt')") is None


def test_send_in_transaction_invisible_until_commit(
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    a, b = conns
    a.execute("BEGIN")
    one(a, "SELECT channel_send('tx', 'pending')")
    assert one(b, "SELECT channel_recv('tx')") is None
    a.execute("COMMIT")
    assert one(b, "SELECT channel_recv('tx')") == "pending"


def test_send_rolled_back_never_delivered(
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    a, b = conns
    a.execute("BEGIN")
    one(a, "SELECT channel_send('tx', 'never')")
    a.execute("ROLLBACK")
    one(a, "SELECT channel_send('tx', 'after')")
    assert one(b, "SELECT channel_recv('tx')") == "after"
    assert one(b, "SELECT channel_recv('tx')") is None


def test_receive_rolled_back_returns_message(
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    a, b = conns
    one(a, "SELECT channel_send('rb', 'first')")
    one(a, "SELECT channel_send('rb', 'second')")
    b.execute("BEGIN")
    assert one(b, "SELECT channel_recv('rb')") == "first"
    b.execute("ROLLBACK")
    assert one(a, "SELECT channel_recv('rb')") == "first"  # back, and still first
    assert one(a, "SELECT channel_recv('rb')") == "second"


def test_batch_receive_of_a_prefix(conns: tuple[sqlite3.Connection, sqlite3.Connection]) -> None:
    a, b = conns
    for i in range(5):
        one(a, "SELECT channel_send(?, ?)", f"p.x!{'ab'[i % 2]}", str(i))
    rows = b.execute("SELECT channel, message FROM channel_recv_batch('p.x!', 10)").fetchall()
    assert rows == [(f"p.x!{'ab'[i % 2]}", str(i)) for i in range(5)]


def test_channel_full_is_integrity_error(
    conns: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    a, _ = conns
    one(a, "SELECT chanlite_capacity('tiny', 1)")
    one(a, "SELECT channel_send('tiny', 'one')")
    with pytest.raises(sqlite3.IntegrityError, match="chanlite: channel full: tiny"):
        one(a, "SELECT channel_send('tiny', 'two')")


def test_errors_name_the_problem(conns: tuple[sqlite3.Connection, sqlite3.Connection]) -> None:
    a, _ = conns
    with pytest.raises(sqlite3.Error, match="chanlite: invalid channel name"):
        one(a, "SELECT channel_send('bad name', 'x')")
    with pytest.raises(sqlite3.Error, match="chanlite: "):
        one(a, "SELECT channel_send('ok', NULL)")
    with pytest.raises(sqlite3.Error, match="chanlite: "):
        one(a, "SELECT channel_send(42, 'x')")


def test_groups_from_sql(conns: tuple[sqlite3.Connection, sqlite3.Connection]) -> None:
    a, b = conns
    assert one(a, "SELECT group_add('room', 'c1')") == 1
    assert one(a, "SELECT group_add('room', 'c2')") == 1
    assert one(a, "SELECT group_discard('room', 'c2')") == 1
    assert one(a, "SELECT group_discard('room', 'c2')") == 0
    assert one(a, "SELECT group_send('room', x'00ff')") == 1
    assert one(b, "SELECT channel_recv('c1')") == b"\x00\xff"


def test_connection_settings_recommended(db_path: str) -> None:
    conn = chanlite.connect(db_path, isolation_level=None)
    assert one(conn, "PRAGMA journal_mode=WAL") == "wal"
    conn.close()
    assert os.path.exists(db_path)
