"""What keeps the layer fork-safe.

A layer used before ``fork()`` (gunicorn ``--preload``, Celery's prefork pool,
``multiprocessing``, daphne's test server) works in the child at once. Just
before a fork, each layer waits for its calls in SQLite to end
(:class:`ForkGate`) and closes its connections, so that no SQLite connection
crosses the fork (SQLite forbids it: the child would share the parent's lock
records without its locks). In the child it starts afresh: new connections,
thread pool, bell watch and process-specific prefix; what the parent had
buffered stays the parent's. The parent opens its connections again on its
next call. Fork from synchronous code, as servers and ``multiprocessing`` do:
a child that carries on running the parent's event loop is not something
asyncio supports.

Each layer registers here (:func:`register`); the handlers below, installed
with ``os.register_at_fork``, call its ``_before_fork``,
``_after_fork_in_parent`` and ``_after_fork_in_child``, which hand on to its
transport (see :class:`chanlite.transport.Transport`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["AFTER_FORK_IN_CHILD_FIRST", "ForkGate", "register", "reinit_lock"]


class ForkGate:
    """Counts the layer's calls that are inside SQLite, so that a fork()
    can wait for them to end and then close the connections while none is
    in use. Entered once per call, on the thread that runs it (never nested,
    and never while holding the layer's lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._shut = 0  # a fork or close() is under way: new calls wait for it

    def enter(self) -> None:
        with self._cond:
            while self._shut:
                self._cond.wait()
            self._inside += 1

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            if self._inside == 0 and self._shut:
                self._cond.notify_all()

    def shut(self, timeout: float) -> bool:
        """Stop new calls and wait for those inside to end; False if some
        were still inside after timeout (the gate stays shut either way,
        until as many open() calls as shut() calls)."""
        with self._cond:
            self._shut += 1
            return self._cond.wait_for(lambda: self._inside == 0, timeout)

    def open(self) -> None:
        with self._cond:
            self._shut -= 1
            if not self._shut:
                self._cond.notify_all()


def reinit_lock(lock: Any) -> Any:
    """lock, unlocked, in a child whose parent may have forked while another
    thread held it; the same object where Python can (objects that captured
    it keep working), else a new one."""
    reinit = getattr(lock, "_at_fork_reinit", None)
    if reinit is None:
        return threading.Lock()
    reinit()
    return lock


class _ForkAware(Protocol):
    def _before_fork(self) -> None: ...
    def _after_fork_in_parent(self) -> None: ...
    def _after_fork_in_child(self) -> None: ...


#: Every layer of the process, for the fork handlers below.
_LAYERS: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
#: Process-wide state that a child starts afresh before any layer does (the
#: in-memory test databases' threads, which layers use).
AFTER_FORK_IN_CHILD_FIRST: list[Callable[[], None]] = []


def register(layer: _ForkAware) -> None:
    """Call layer's fork handlers around every fork() of this process, for
    as long as it lives."""
    _LAYERS.add(layer)


def _before_fork() -> None:
    for layer in list(_LAYERS):
        layer._before_fork()


def _after_fork_in_parent() -> None:
    for layer in list(_LAYERS):
        layer._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for reset in AFTER_FORK_IN_CHILD_FIRST:
        reset()
    for layer in list(_LAYERS):
        layer._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
