"""Test settings for the chat demo (examples/django_chat), as a project
writes its own for ChannelsLiveServerTestCase: the live server is another
process (daphne, forked by multiprocessing), so the test database and the
channel layer must both be files that process can open, not ":memory:".

Both files go to CHANLITE_TEST_DIR (a new temporary directory if unset; it
is put back in the environment so that a server process started with spawn
rather than fork finds the same files)."""

import os
import tempfile
from pathlib import Path

from mysite.settings import *  # noqa: F403 (the demo's settings, overridden below)

TEST_DIR = Path(os.environ.get("CHANLITE_TEST_DIR") or tempfile.mkdtemp(prefix="chanlite-live-"))
os.environ["CHANLITE_TEST_DIR"] = str(TEST_DIR)

DATABASES = {
    "default": {
        "ENGINE": "chanlite.django.backend",
        "NAME": TEST_DIR / "db.sqlite3",
        "OPTIONS": {"transaction_mode": "IMMEDIATE"},
        # Django tests SQLite on ":memory:" unless TEST NAME is a file.
        "TEST": {"NAME": str(TEST_DIR / "test_db.sqlite3")},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "chanlite.layer.SQLiteChannelLayer",
        "CONFIG": {"path": str(TEST_DIR / "channels.sqlite3")},
    }
}
