"""Shared fixtures. The extension is the installed package's, or the one the
CHANLITE_EXTENSION environment variable names (a build directory's
chanlite.so, with PYTHONPATH=python, for development).

Django is configured here, once for the whole session, on a database file
in a temporary directory: ENGINE chanlite.django.backend, and the default
channel layer on that same database (the transactional outbox form).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import django
import pytest
from django.conf import settings

import chanlite
from chanlite.layer import SQLiteChannelLayer

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


@pytest.fixture
async def layer(db_path: str) -> AsyncIterator[SQLiteChannelLayer]:
    """A layer with capacity 3 (as channels_redis's tests), flushed and closed after."""
    instance = SQLiteChannelLayer(path=db_path, capacity=3)
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
