"""Django's sqlite3 backend, with chanlite loaded into every connection and
the recommended settings (WAL, synchronous=NORMAL, journal_size_limit) for
database files.

    DATABASES = {"default": {"ENGINE": "chanlite.django.backend", "NAME": BASE_DIR / "db.sqlite3",
                             "OPTIONS": {"transaction_mode": "IMMEDIATE"}}}

Fork-safe: SQLite forbids a connection to cross fork() (chanlite refuses its
calls on one that did). Just before a fork, the forking thread's connections
of this backend are closed, unless inside ``transaction.atomic()``; a child
that still finds one of its parent's (another thread's, or one in an atomic
block) leaves it alone, never closing it, and connects afresh.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from django.db.backends.sqlite3 import base

import chanlite

__all__ = ["DatabaseWrapper"]

#: Connections a child found open from its parent: kept referenced, so that
#: no finalizer closes them in this process (that too would cross the fork).
_INHERITED: list[Any] = []


class DatabaseWrapper(base.DatabaseWrapper):
    #: The process that opened self.connection.
    _chanlite_pid: int | None = None

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        conn = super().get_new_connection(conn_params)
        chanlite.load(conn)
        if not self.is_in_memory_db():
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Keep a limit the project set itself (OPTIONS init_command).
            if conn.execute("PRAGMA journal_size_limit").fetchone()[0] < 0:
                conn.execute(f"PRAGMA journal_size_limit={chanlite.JOURNAL_SIZE_LIMIT}")
        self._chanlite_pid = os.getpid()
        return conn

    def ensure_connection(self) -> None:
        self._leave_inherited()
        super().ensure_connection()

    def _close(self) -> None:
        if not self._leave_inherited():
            super()._close()

    def _leave_inherited(self) -> bool:
        """In a forked child, forget the parent's connection (and the state
        of its transaction, which is the parent's to finish) without using
        or closing it; True if there was one."""
        if self.connection is None or self._chanlite_pid in (None, os.getpid()):
            return False
        _INHERITED.append(self.connection)
        self.connection = None
        self._chanlite_pid = None
        self.in_atomic_block = False
        self.atomic_blocks = []
        self.savepoint_ids = []
        self.needs_rollback = False
        self.closed_in_transaction = False
        self.run_on_commit = []
        return True


def _before_fork() -> None:
    """Close the forking thread's connections of this backend that can be
    closed (not inside an atomic block, not an in-memory database, which
    closing would destroy): Django opens them again on next use."""
    try:
        from django.db import connections

        wrappers = connections.all(initialized_only=True)
    except Exception:  # Django not configured in this process
        return
    for wrapper in wrappers:
        if (
            isinstance(wrapper, DatabaseWrapper)
            and wrapper.connection is not None
            and wrapper._chanlite_pid == os.getpid()
            and not wrapper.in_atomic_block
            and not wrapper.is_in_memory_db()
        ):
            with contextlib.suppress(Exception):
                wrapper.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)
