"""The chanlite admin command: its output on a known database, --json, the
commands that change the database, exit codes, and manage.py chanlite."""

from __future__ import annotations

import base64
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from django.core.management import CommandError, call_command
from django.test.utils import override_settings

import chanlite
from chanlite import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def known(db_path: str) -> Iterator[str]:
    """A database with known content: channels with messages sent 3 h, 2 h
    and 1 h ago (expiry one day) and two groups."""
    c = chanlite.connect(db_path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("SELECT chanlite_config('expiry', 86400)")
    now = time.time()
    for channel, n, hours in (("chat.lobby", 5, 3), ("chat.other", 2, 2), ("worker!a1", 3, 1)):
        c.execute("SELECT chanlite_clock(?)", (now - hours * 3600,))
        for i in range(n):
            c.execute("SELECT channel_send(?, ?)", (channel, f"m{i}"))
    c.execute("SELECT chanlite_clock(NULL)")
    for group, channel in (("room", "chat.lobby"), ("room", "chat.other"), ("solo", "worker!a1")):
        c.execute("SELECT group_add(?, ?)", (group, channel))
    c.close()
    yield db_path


def chanlite_cmd(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """Run the admin command in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: usage errors
        return int(e.code or 0), "", ""
    code = cli.run(args, args.database, out, err, io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def count(db: str) -> int:
    c = sqlite3.connect(db)
    try:
        return int(c.execute("SELECT count(*) FROM chanlite_message").fetchone()[0])
    finally:
        c.close()


def test_status_shows_channels_and_groups_in_aligned_tables(known: str) -> None:
    code, out, err = chanlite_cmd("status", known)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("chanlite v") and lines[0].endswith(known)
    assert "journal wal" in lines[1]
    assert lines[2] == "10 messages in 3 channels; 2 groups with 3 memberships"
    table = out.split("\n\n")[1].splitlines()
    assert table == [
        "CHANNEL     DEPTH  OLDEST",
        "chat.lobby      5   3h00m",
        "worker!a1       3   1h00m",
        "chat.other      2   2h00m",
    ]
    groups = out.split("\n\n")[2].splitlines()
    assert groups[0] == "GROUP  MEMBERS  NEXT EXPIRY"
    assert re.fullmatch(r"room\s+2\s+23h5\dm", groups[1])
    assert re.fullmatch(r"solo\s+1\s+23h5\dm", groups[2])


def test_status_json_matches_the_database(known: str) -> None:
    code, out, _ = chanlite_cmd("status", known, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["database"] == known
    assert data["totals"] == {"channels": 3, "messages": 10, "groups": 2, "memberships": 3}
    assert [(c["channel"], c["depth"]) for c in data["channels"]] == [
        ("chat.lobby", 5),
        ("worker!a1", 3),
        ("chat.other", 2),
    ]
    assert 3 * 3600 <= data["channels"][0]["oldest_age"] < 3 * 3600 + 60
    assert [(g["group"], g["members"]) for g in data["groups"]] == [("room", 2), ("solo", 1)]
    assert data["files"]["journal_mode"] == "wal" and data["files"]["file_size"] > 0


def test_status_limit(known: str) -> None:
    _, out, _ = chanlite_cmd("status", known, "--limit", "1")
    assert "chat.lobby" in out and "chat.other" not in out
    assert "... and 2 more channels (--limit 0: all)" in out
    data = json.loads(chanlite_cmd("status", known, "--json", "--limit", "1")[1])
    assert len(data["channels"]) == 1 and data["totals"]["channels"] == 3


def test_top_redraws_the_given_number_of_times(known: str) -> None:
    code, out, _ = chanlite_cmd("top", known, "--iterations", "3", "--interval", "0.01")
    assert code == 0
    assert out.count("chanlite top - ") == 3
    assert out.count("chat.lobby      5   3h00m") == 3
    assert "\x1b[2J" not in out  # no screen control when not on a terminal
    code, out, _ = chanlite_cmd("top", known, "--once", "--json")
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 1 and frames[0]["totals"]["messages"] == 10


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_top_on_a_terminal_clears_the_screen_before_each_view(known: str) -> None:
    args = cli.build_parser().parse_args(["top", known, "--iterations", "2", "--interval", "0.01"])
    out = Terminal()
    assert cli.run(args, known, out, io.StringIO(), io.StringIO()) == 0
    frames = out.getvalue().split("\x1b[H\x1b[2J")
    assert frames[0] == "" and len(frames) == 3
    assert all(f.startswith("chanlite top - ") and "chat.lobby" in f for f in frames[1:])


WITHOUT_THE_EXTENSION = """
import sqlite3, sys
from chanlite import monitor
plain = sqlite3.connect(sys.argv[1])  # no chanlite: no chanlite_stats
for read in (monitor.stats, monitor.dead_letters):
    try:
        read(plain)
    except monitor.NotAvailable as e:
        print(e)
"""


def test_stats_and_dead_say_when_the_database_lacks_them(known: str) -> None:
    """A database made, and read, by an extension from before metrics and dead
    letters. (In a process of its own: where chanlite is an auto-extension,
    every connection of this process has it.)"""
    plain = sqlite3.connect(known)
    plain.execute("DROP TABLE IF EXISTS chanlite_dead")
    plain.close()
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_EXTENSION, known],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("chanlite: metrics are not available")
    assert lines[1].startswith("chanlite: dead letters are not available")
    code, out, err = chanlite_cmd("dead", known)
    assert (code, out) == (2, "") and "dead letters are not available" in err


@pytest.fixture
def traffic(db_path: str) -> Iterator[str]:
    """A database with counted traffic and dead letters kept: 'chat' sent 3,
    received 2; 'old' sent 2, both expired; 'tiny' (capacity 1) sent 1, then
    refused once by channel_send and once by group_send."""
    c = chanlite.connect(db_path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("SELECT chanlite_config('dead_letters', 100)")
    c.execute("SELECT chanlite_config('expiry', 1)")
    c.execute("SELECT chanlite_clock(?)", (time.time() - 100,))
    for _ in range(2):
        c.execute("SELECT channel_send('old', 'too late')")
    c.execute("SELECT chanlite_clock(NULL)")
    c.execute("SELECT chanlite_config('expiry', 600)")
    for i in range(3):
        c.execute("SELECT channel_send('chat', ?)", (f"m{i}",))
    for _ in range(2):
        c.execute("SELECT channel_recv('chat')")
    c.execute("SELECT chanlite_capacity('tiny', 1)")
    c.execute("SELECT channel_send('tiny', 'fits')")
    with pytest.raises(sqlite3.IntegrityError, match="channel full: tiny"):
        c.execute(
            "SELECT channel_send('tiny', ?)",
            (msgpack.packb({"type": "chat.message", "text": "hi"}),),
        )
    c.execute("SELECT group_add('room', 'tiny')")
    assert c.execute("SELECT group_send('room', 'to the room')").fetchone()[0] == 0
    c.execute("SELECT channel_trim()")  # the expired ones, unless sends removed them already
    c.close()
    yield db_path


def test_stats_counts_per_channel_and_in_total(traffic: str) -> None:
    code, out, _ = chanlite_cmd("stats", traffic, "--json")
    assert code == 0
    data = json.loads(out)
    counters = ["sent", "received", "expired", "full_send", "full_group_send", "depth"]

    def figures(row: dict[str, object]) -> list[object]:
        return [row[k] for k in counters]

    assert {r["channel"]: figures(r) for r in data["channels"]} == {
        "chat": [3, 2, 0, 0, 0, 1],
        "old": [2, 0, 2, 0, 0, 0],
        "tiny": [1, 0, 0, 1, 1, 1],
    }
    assert data["totals"]["channel"] is None
    assert figures(data["totals"]) == [6, 2, 2, 1, 1, 2]

    code, out, _ = chanlite_cmd("stats", traffic)
    lines = out.splitlines()
    assert lines[0] == "CHANNEL  SENT  RECEIVED  EXPIRED  FULL  FULL(GROUP)  DEPTH  OLDEST"
    assert re.fullmatch(
        r"chat        3         2        0     0            0      1  +\d\.\ds", lines[1]
    )
    assert re.fullmatch(r"old         2         0        2     0            0      0  +-", lines[2])
    assert re.fullmatch(
        r"tiny        1         0        0     1            1      1  +\d\.\ds", lines[3]
    )
    assert re.fullmatch(
        r"\(total\)     6         2        2     1            1      2  +\d\.\ds", lines[4]
    )
    assert len(lines) == 5


def test_dead_lists_dead_letters_newest_first(traffic: str) -> None:
    code, out, _ = chanlite_cmd("dead", traffic, "--json")
    assert code == 0
    letters = json.loads(out)
    # by when they died: the expired ones expired 99 s ago, the refusals just now
    assert [(d["channel"], d["reason"]) for d in letters] == [
        ("tiny", "full"),
        ("tiny", "full"),
        ("old", "expired"),
        ("old", "expired"),
    ]
    assert 98 < time.time() - letters[2]["dead_at"] < 160
    refused = letters[1]
    assert refused["message"] == {"type": "chat.message", "text": "hi"}  # msgpack, decoded
    assert (
        refused["body"]
        == base64.b64encode(msgpack.packb({"type": "chat.message", "text": "hi"})).decode()
    )
    assert letters[0]["message"] == letters[0]["body"] == "to the room"  # TEXT stays TEXT

    code, out, _ = chanlite_cmd("dead", traffic, "--channel", "tiny", "--limit", "1")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "CHANNEL", "REASON", "SENT", "DIED", "SIZE", "MESSAGE"]
    assert len(lines) == 2
    assert re.fullmatch(r"\s*\d+  tiny     full    \S+ ago  \S+ ago  11 B  'to the room'", lines[1])


def test_dead_says_when_keeping_them_is_off(known: str) -> None:
    code, out, _ = chanlite_cmd("dead", known)
    assert code == 0
    assert out.startswith("no dead letters: keeping them is off")


def test_top_shows_rates_from_the_counters(traffic: str) -> None:
    code, out, _ = chanlite_cmd("top", traffic, "--iterations", "2", "--interval", "0.01")
    assert code == 0
    frames = out.split("chanlite top - ")[1:]
    assert len(frames) == 2
    assert "/s" not in frames[0]  # no rates before a second look
    assert re.search(
        r"^sent 0\.0/s  received 0\.0/s  expired 0\.0/s  dropped 0\.0/s$", frames[1], re.M
    )


def test_trim_removes_expired_messages(known: str) -> None:
    c = chanlite.connect(known, isolation_level=None)
    c.execute("SELECT chanlite_config('expiry', 1)")
    c.execute("SELECT chanlite_clock(?)", (time.time() - 10,))
    for _ in range(4):
        c.execute("SELECT channel_send('gone', 'x')")
    c.close()
    code, out, _ = chanlite_cmd("trim", known, "--json")
    assert (code, json.loads(out)) == (0, {"removed": 4})
    assert count(known) == 10
    assert chanlite_cmd("trim", known)[1] == (
        "trimmed: removed 0 expired messages and group memberships\n"
    )


def test_flush_asks_first(known: str) -> None:
    code, out, _ = chanlite_cmd("flush", known, stdin="n\n")
    assert code == 1
    assert "Remove 10 messages in 3 channels and 3 group memberships from" in out
    assert out.endswith("not flushed\n")
    assert count(known) == 10
    code, out, _ = chanlite_cmd("flush", known)  # no answer at all: no
    assert code == 1 and count(known) == 10
    code, out, _ = chanlite_cmd("flush", known, stdin="y\n")
    assert code == 0 and "flushed: removed 13 rows" in out
    assert count(known) == 0


def test_flush_yes_does_not_ask(known: str) -> None:
    code, out, _ = chanlite_cmd("flush", known, "--yes", "--json")
    assert (code, json.loads(out)) == (0, {"removed": 13})
    assert count(known) == 0


def test_vacuum_gives_free_pages_back(db_path: str) -> None:
    c = chanlite.connect(db_path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    # An app's database: it has tables before chanlite's, so chanlite leaves
    # its auto_vacuum mode alone (a blank one would be made incremental).
    c.execute("CREATE TABLE app_item(id INTEGER PRIMARY KEY)")
    c.execute("SELECT chanlite_config('capacity', 5000)")
    for _ in range(2000):
        c.execute("SELECT channel_send('burst', ?)", (b"x" * 1024,))
    c.execute("SELECT channel_flush()")
    c.close()
    code, out, _ = chanlite_cmd("vacuum", db_path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["before"]["auto_vacuum"] != "incremental"
    assert report["ran"][:2] == ["PRAGMA auto_vacuum = INCREMENTAL", "VACUUM"]
    assert report["after"]["auto_vacuum"] == "incremental"
    assert report["after"]["free_pages"] == 0 and report["after"]["wal_size"] == 0
    assert (
        report["after"]["file_size"]
        < 200 * 1024
        < 2 * 1024 * 1024
        < report["before"]["file_size"] + report["before"]["wal_size"]
    )
    assert report["checkpoint_complete"] is True

    c = chanlite.connect(db_path, isolation_level=None)
    for _ in range(500):
        c.execute("SELECT channel_send('burst', ?)", (b"x" * 1024,))
    c.execute("SELECT channel_flush()")
    c.close()
    code, out, _ = chanlite_cmd("vacuum", db_path)
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "ran:    PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE)"
    assert re.fullmatch(
        r"after:  file .*, WAL 0 B, 0 free of \d+ pages, auto_vacuum incremental", lines[2]
    )


def test_health_exit_codes(known: str, tmp_path: Path) -> None:
    code, out, _ = chanlite_cmd("health", known)
    assert code == 2  # the oldest message has waited 3 h: over the error threshold
    assert out.splitlines()[0] == f"{known}: ERROR"
    assert re.search(r"^error\s+oldest_message\s+oldest message waited 108\d\d\.\d s", out, re.M)
    assert re.search(r"^ok\s+queues\s+3 queue\(s\); fullest chat.lobby: 5 of 100$", out, re.M)
    code, out, _ = chanlite_cmd("health", known, "--threshold", "oldest_age_error=none")
    assert code == 1 and out.splitlines()[0] == f"{known}: WARNING"
    code, out, _ = chanlite_cmd(
        "health",
        known,
        "--json",
        "--threshold",
        "oldest_age_warning=none",
        "--threshold",
        "oldest_age_error=off",
    )
    assert code == 0 and json.loads(out)["status"] == "ok"
    code, out, _ = chanlite_cmd("health", str(tmp_path / "missing.sqlite3"))
    assert code == 2 and "ERROR" in out
    code, _, err = chanlite_cmd("health", known, "--threshold", "bogus=1")
    assert code == 2 and "unknown health threshold(s) bogus" in err
    code, _, err = chanlite_cmd("health", known, "--threshold", "wal_size_warning")
    assert code == 2 and "expected NAME=VALUE" in err


def test_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    code, out, err = chanlite_cmd("status", str(missing))
    assert (code, out) == (2, "")
    assert err == f"chanlite: cannot open {missing}: no database at {missing}\n"
    assert not missing.exists()
    assert chanlite_cmd("frobnicate", str(missing))[0] == 2
    assert chanlite_cmd()[0] == 2


def test_the_console_script(known: str) -> None:
    """pyproject's [project.scripts] names cli.main; run it as a program."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\nchanlite = "chanlite.cli:main"\n' in pyproject
    done = subprocess.run(
        [sys.executable, "-m", "chanlite.cli", "status", known, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["messages"] == 10
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chanlite.cli",
            "health",
            known,
            "--threshold",
            "oldest_age_error=none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout


# ---- manage.py chanlite ----

INSTALLED = ["django.contrib.contenttypes", "django.contrib.auth", "channels", "chanlite.django"]


def manage(db: str, *argv: str) -> str:
    layers = {
        "default": {"BACKEND": "chanlite.layer.SQLiteChannelLayer", "CONFIG": {"path": db}},
        "other": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    out = io.StringIO()
    with override_settings(INSTALLED_APPS=INSTALLED, CHANNEL_LAYERS=layers):
        call_command("chanlite", *argv, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_management_command_uses_the_layers_database(known: str) -> None:
    assert manage(known, "status") == chanlite_cmd("status", known)[1]
    data = json.loads(manage(known, "status", "--json", "--layer", "default"))
    assert data["database"] == known and data["totals"]["messages"] == 10
    assert "trimmed: removed 0" in manage(known, "trim")


def test_the_management_command_exit_codes(known: str) -> None:
    with pytest.raises(CommandError) as warned:
        manage(known, "health", "--threshold", "oldest_age_error=none")
    assert warned.value.returncode == 1
    assert manage(
        known,
        "health",
        "--threshold",
        "oldest_age_warning=none",
        "--threshold",
        "oldest_age_error=none",
    ).startswith(f"{known}: OK\n")
    with pytest.raises(CommandError, match=r"not chanlite\.layer\.SQLiteChannelLayer") as wrong:
        manage(known, "status", "--layer", "other")
    assert wrong.value.returncode == 2
    with pytest.raises(CommandError, match="no channel layer 'nope'"):
        manage(known, "status", "--layer", "nope")
