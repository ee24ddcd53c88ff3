"""Django's sqlite3 backend, with chanlite loaded into every connection and
the recommended settings (WAL, synchronous=NORMAL, journal_size_limit) for
database files.

    DATABASES = {"default": {"ENGINE": "chanlite.django.backend", "NAME": BASE_DIR / "db.sqlite3",
                             "OPTIONS": {"transaction_mode": "IMMEDIATE"}}}
"""

from __future__ import annotations

from typing import Any

from django.db.backends.sqlite3 import base

import chanlite

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        conn = super().get_new_connection(conn_params)
        chanlite.load(conn)
        if not self.is_in_memory_db():
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Keep a limit the project set itself (OPTIONS init_command).
            if conn.execute("PRAGMA journal_size_limit").fetchone()[0] < 0:
                conn.execute(f"PRAGMA journal_size_limit={chanlite.JOURNAL_SIZE_LIMIT}")
        return conn
