"""chanlite.health(): each check's thresholds, what breaks it, that it leaves
no trace; and the Django system check that runs it on the channel layers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core import checks
from django.test.utils import override_settings

import chanlite
from chanlite import Status, Thresholds, health

CHECKS = ["database", "extension", "journal_mode", "wal_size", "queues", "oldest_message"]


@pytest.fixture
def conn(db_path: str) -> Iterator[sqlite3.Connection]:
    """A WAL database with chanlite, capacity 10, expiry 1000 s."""
    c = chanlite.connect(db_path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("SELECT chanlite_config('capacity', 10)")
    c.execute("SELECT chanlite_config('expiry', 1000)")
    yield c
    c.close()


def send(conn: sqlite3.Connection, channel: str, n: int, age: float = 0.0) -> None:
    """n messages to channel, sent ``age`` seconds ago."""
    conn.execute("SELECT chanlite_clock(?)", (time.time() - age,))
    for _ in range(n):
        conn.execute("SELECT channel_send(?, 'x')", (channel,))
    conn.execute("SELECT chanlite_clock(NULL)")


def statuses(report: chanlite.HealthReport) -> dict[str, str]:
    return {c.name: c.status.value for c in report.checks}


def test_a_healthy_database_passes_every_check(conn: sqlite3.Connection, db_path: str) -> None:
    send(conn, "chat", 3)
    report = health(db_path)
    assert [c.name for c in report.checks] == CHECKS
    assert report.status is Status.OK and report.ok
    assert (
        report.check("extension").value
        == conn.execute(  # type: ignore[union-attr]
            "SELECT chanlite_version()"
        ).fetchone()[0]
    )
    assert report.check("queues").value == [  # type: ignore[union-attr]
        {"queue": "chat", "depth": 3, "capacity": 10, "status": "ok"}
    ]
    data = report.to_dict()
    assert data["status"] == "ok" and data["database"] == str(Path(db_path).resolve())


def test_a_queue_nearly_full_warns_and_a_full_one_is_an_error(
    conn: sqlite3.Connection, db_path: str
) -> None:
    send(conn, "chat", 7)
    assert statuses(health(db_path))["queues"] == "ok"
    send(conn, "chat", 1)  # 8 of 10
    report = health(db_path)
    assert statuses(report)["queues"] == "warning"
    assert "chat: 8 of 10" in report.check("queues").summary  # type: ignore[union-attr]
    send(conn, "chat", 2)  # full: the next send fails
    report = health(db_path)
    assert statuses(report)["queues"] == "error" and report.status is Status.ERROR


def test_process_specific_channels_count_against_their_prefix(
    conn: sqlite3.Connection, db_path: str
) -> None:
    send(conn, "w.x!a", 5)
    send(conn, "w.x!b", 4)
    report = health(db_path)
    assert report.check("queues").value[0] == {  # type: ignore[union-attr]
        "queue": "w.x!",
        "depth": 9,
        "capacity": 10,
        "status": "warning",
    }


def test_queue_fill_uses_each_channels_capacity(conn: sqlite3.Connection, db_path: str) -> None:
    conn.execute("SELECT chanlite_capacity('big.*', 1000)")
    send(conn, "big.one", 9)
    assert statuses(health(db_path))["queues"] == "ok"
    limits = Thresholds(queue_depth_warning=5)
    assert statuses(health(db_path, thresholds=limits))["queues"] == "warning"


def test_an_old_message_warns_then_errs(conn: sqlite3.Connection, db_path: str) -> None:
    send(conn, "slow", 1, age=40)
    report = health(db_path)
    assert statuses(report)["oldest_message"] == "warning"
    assert report.check("oldest_message").value["channel"] == "slow"  # type: ignore[union-attr]
    assert statuses(health(db_path, thresholds=Thresholds(oldest_age_warning=None))) == {
        name: "ok" for name in CHECKS
    }
    send(conn, "slower", 1, age=200)
    report = health(db_path)
    assert statuses(report)["oldest_message"] == "error"
    assert report.check("oldest_message").value["channel"] == "slower"  # type: ignore[union-attr]


def test_a_large_wal_warns(conn: sqlite3.Connection, db_path: str) -> None:
    send(conn, "chat", 1)  # conn stays open, so the WAL stays
    wal = Path(db_path + "-wal").stat().st_size
    assert wal > 0
    assert (
        statuses(health(db_path, thresholds=Thresholds(wal_size_warning=wal)))["wal_size"]
        == "warning"
    )
    assert (
        statuses(health(db_path, thresholds=Thresholds(wal_size_error=wal)))["wal_size"] == "error"
    )


def test_rollback_journal_mode_warns(db_path: str) -> None:
    c = chanlite.connect(db_path, isolation_level=None)
    c.execute("SELECT channel_send('chat', 'x')")
    c.close()
    report = health(db_path)
    assert statuses(report)["journal_mode"] == "warning"
    assert "use WAL" in report.check("journal_mode").summary  # type: ignore[union-attr]


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    report = health(missing)
    assert report.status is Status.ERROR
    assert [(c.name, c.status) for c in report.checks] == [("database", Status.ERROR)]
    assert "no database at" in report.checks[0].summary
    assert not missing.exists()


def test_a_directory_or_a_file_that_is_not_a_database_is_an_error(tmp_path: Path) -> None:
    assert "directory" in health(tmp_path).checks[0].summary
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database, not at all" * 100)
    report = health(junk)
    assert report.status is Status.ERROR
    assert "not a database" in report.checks[0].summary


def test_an_unwritable_database_is_an_error(conn: sqlite3.Connection, db_path: str) -> None:
    send(conn, "chat", 1)
    readonly = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        report = health(readonly)
        check = report.check("database")
        assert check is not None and check.status is Status.ERROR
        assert "not writable" in check.summary and "readonly" in check.summary
        assert not readonly.in_transaction
    finally:
        readonly.close()


def test_a_write_lock_held_elsewhere_is_an_error(conn: sqlite3.Connection, db_path: str) -> None:
    send(conn, "chat", 1)
    conn.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        report = health(db_path, timeout=0.2)
        assert time.monotonic() - started < 2
    finally:
        conn.execute("ROLLBACK")
    check = report.check("database")
    assert check is not None and check.status is Status.ERROR
    assert "write lock not available" in check.summary


def test_checking_leaves_no_trace(conn: sqlite3.Connection, db_path: str) -> None:
    send(conn, "chat", 2)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = [Path(db_path), Path(db_path + "-wal"), Path(db_path + "-chanlite")]

    def fingerprint() -> list[str]:
        return [hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else "-" for f in files]

    before = fingerprint()
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    assert health(db_path).ok
    assert fingerprint() == before
    assert conn.execute("PRAGMA data_version").fetchone()[0] == version  # nobody committed


def test_health_of_an_open_connection_leaves_it_usable(conn: sqlite3.Connection) -> None:
    send(conn, "chat", 1)
    report = health(conn)
    assert report.ok, report.to_dict()
    assert not conn.in_transaction
    assert conn.execute("SELECT channel_recv('chat')").fetchone()[0] == "x"


def test_unknown_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown health threshold.*wal_size_warnign"):
        Thresholds.from_mapping({"wal_size_warnign": 1})


# ---- the Django system check ----


def django_check(**overrides: object) -> list[checks.CheckMessage]:
    installed = [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "channels",
        "chanlite.django",
    ]
    with override_settings(INSTALLED_APPS=installed, **overrides):
        return checks.run_checks(tags=["chanlite"])


def layers(path: str) -> dict[str, object]:
    return {
        "CHANNEL_LAYERS": {
            "default": {"BACKEND": "chanlite.layer.SQLiteChannelLayer", "CONFIG": {"path": path}}
        }
    }


def test_the_django_check_reports_warnings_by_id(conn: sqlite3.Connection, db_path: str) -> None:
    assert django_check(**layers(db_path)) == []
    send(conn, "chat", 10, age=40)  # full, and old
    messages = django_check(**layers(db_path))
    assert sorted(m.id for m in messages) == ["chanlite.W005", "chanlite.W006"]
    assert all(m.level == checks.WARNING for m in messages)
    full = next(m for m in messages if m.id == "chanlite.W005")
    assert "'default'" in full.msg and "over the error threshold" in full.msg
    silenced = django_check(
        CHANLITE_HEALTH={"queue_fill_warning": None, "queue_fill_error": None},
        **layers(db_path),
    )
    assert [m.id for m in silenced] == ["chanlite.W006"]


def test_the_django_check_reports_an_unusable_database_as_an_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 500)
    messages = django_check(**layers(str(junk)))
    assert [(m.id, m.level) for m in messages] == [("chanlite.E001", checks.ERROR)]
    nowhere = django_check(**layers(str(tmp_path / "no" / "such" / "dir.sqlite3")))
    assert [m.id for m in nowhere] == ["chanlite.E001"]
    assert "not a writable directory" in nowhere[0].msg


def test_the_django_check_skips_a_database_not_created_yet(tmp_path: Path) -> None:
    assert django_check(**layers(str(tmp_path / "later.sqlite3"))) == []
    assert not (tmp_path / "later.sqlite3").exists()


def test_the_django_check_refuses_bad_thresholds(db_path: str) -> None:
    messages = django_check(CHANLITE_HEALTH={"nonsense": 1}, **layers(db_path))
    assert [m.id for m in messages] == ["chanlite.E007"]


# ---- the demo's health endpoint ----


def test_the_demo_health_endpoint_is_200_until_an_error(
    conn: sqlite3.Connection, db_path: str, tmp_path: Path
) -> None:
    import sys

    from django.test import RequestFactory

    demo = str(Path(__file__).resolve().parents[2] / "examples" / "django_chat")
    sys.path.insert(0, demo)
    try:
        from chat.views import health as endpoint
    finally:
        sys.path.remove(demo)
    request = RequestFactory().get("/health/")

    def get(path: str) -> tuple[int, dict[str, object]]:
        with override_settings(**layers(path)):
            response = endpoint(request)
        return response.status_code, json.loads(response.content)

    status, body = get(db_path)
    assert (status, body["status"]) == (200, "ok")
    assert [c["name"] for c in body["checks"]] == CHECKS  # type: ignore[union-attr]
    send(conn, "chat", 1, age=40)
    assert get(db_path)[0] == 200 and get(db_path)[1]["status"] == "warning"
    send(conn, "chat", 9)
    status, body = get(db_path)
    assert (status, body["status"]) == (503, "error")
    assert get(str(tmp_path / "not-yet.sqlite3"))[0] == 200  # created on first use
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 500)
    assert get(str(junk))[0] == 503
