"""Shared fixtures. The extension is the installed package's, or the one the
CHANLITE_EXTENSION environment variable names (a build directory's
chanlite.so, with PYTHONPATH=python, for development).

Django is configured here, once for the whole session, on a database file
in a temporary directory: ENGINE chanlite.django.backend, and the default
channel layer on that same database (the transactional outbox form).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

import chanlite
from chanlite.layer import SQLiteChannelLayer
from helpers import free_ports
from transports import new_layer

DJANGO_DIR = Path(tempfile.mkdtemp(prefix="chanlite-django-"))

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="chanlite-tests",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "channels"],
        DATABASES={
            "default": {
                "ENGINE": "chanlite.django.backend",
                "NAME": str(DJANGO_DIR / "app.sqlite3"),
                "OPTIONS": {"transaction_mode": "IMMEDIATE"},
            }
        },
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "chanlite.layer.SQLiteChannelLayer",
                "CONFIG": {"database": "default"},
            }
        },
        USE_TZ=True,
    )
    django.setup()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "layer.sqlite3")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: runs on a 3-node dqlite cluster (Python >= 3.13 and chanlite-node; "
        "the nox session 'cluster' runs them, the corners deselect them)",
    )


@pytest.fixture(scope="session")
def dqlite_cluster() -> Iterator[Any]:
    """Three chanlite-node processes on 127.0.0.1, .2 and .3 (tests/cluster/nodes.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
    from nodes import Cluster

    with Cluster() as cluster:
        yield cluster


@pytest.fixture
async def layer(db_path: str) -> AsyncIterator[SQLiteChannelLayer]:
    """A layer with capacity 3 (as channels_redis's tests), flushed and closed after."""
    instance = new_layer(db_path, capacity=3)
    yield instance
    await instance.flush()
    await instance.close()


@pytest.fixture
def sql(db_path: str) -> Iterator[sqlite3.Connection]:
    """A plain connection with chanlite, to look at the layer's database."""
    conn = chanlite.connect(db_path, isolation_level=None)
    yield conn
    conn.close()


def _depth(conn: sqlite3.Connection, channel: str) -> int:
    row = conn.execute(
        "SELECT depth FROM chanlite_channels WHERE channel = ?", (channel,)
    ).fetchone()
    return 0 if row is None else int(row[0])


@pytest.fixture
def depth() -> Callable[[sqlite3.Connection, str], int]:
    """depth(conn, channel): unexpired messages queued on a full channel name."""
    return _depth


# The chat demo (examples/django_chat) served by two daphne processes on two
# free ports, sharing one chanlite database file in a temporary directory.
# Used by test_demo.py (a raw WebSocket client) and test_browser.py (chromium).

DEMO = Path(__file__).resolve().parents[2] / "examples" / "django_chat"


@pytest.fixture
def demo_servers(tmp_path: Path) -> Iterator[list[int]]:
    """The ports of two running demo servers; both are stopped at teardown.
    Each server's output goes to daphne-<port>.log in tmp_path."""
    env = {"CHANLITE_DB": str(tmp_path / "channels.sqlite3")}
    with serve_demo(tmp_path, [env, env]) as ports:
        yield ports


@pytest.fixture
def demo_servers_with(
    tmp_path: Path,
) -> Callable[[list[dict[str, str]]], contextlib.AbstractContextManager[list[int]]]:
    """serve_demo(tmp_path, envs), for tests that start servers of their own."""
    return lambda envs: serve_demo(tmp_path, envs)


@contextlib.contextmanager
def serve_demo(tmp_path: Path, envs: list[dict[str, str]]) -> Iterator[list[int]]:
    """One demo server (daphne) per entry of envs, with those variables set,
    each on a free port: their ports, once every one answers. Each server's
    output goes to daphne-<port>.log in tmp_path; all are stopped on exit."""
    ports = free_ports(len(envs))
    base = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "PYTHONPATH": os.pathsep.join(
            [str(DEMO), *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))]
        ),
    }
    daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]
    logs = [tmp_path / f"daphne-{port}.log" for port in ports]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, log, env in zip(ports, logs, envs, strict=True):
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*daphne, "-p", str(port), "mysite.asgi:application"],
                        cwd=tmp_path,
                        env={**base, **env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 30
        for port, proc, log in zip(ports, procs, logs, strict=True):
            while True:
                assert proc.poll() is None, f"daphne on {port} exited:\n{log.read_text()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, (
                        f"daphne on {port} did not start in 30 s:\n{log.read_text()}"
                    )
                    time.sleep(0.05)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
