"""Watching chanlite's bell with inotify (Linux only), through ctypes on libc.

The extension rings the bell, the file ``<database>-chanlite``, by writing a
byte to it after every committed send (ext/wake.c): an inotify descriptor
watching it for IN_MODIFY becomes readable then, in any process, and an event
loop can wait for that with ``add_reader``.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 4096  # at least one event with the longest name

_libc: ctypes.CDLL | None = None
_unavailable: str | None = None


def _load() -> ctypes.CDLL:
    """libc with inotify, or OSError saying why not."""
    global _libc, _unavailable
    if _libc is not None:
        return _libc
    if _unavailable is None:
        if not sys.platform.startswith("linux"):
            _unavailable = f"inotify is Linux only, not {sys.platform}"
        else:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.inotify_init1.argtypes = [ctypes.c_int]
                libc.inotify_init1.restype = ctypes.c_int
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
                libc.inotify_add_watch.restype = ctypes.c_int
            except (OSError, AttributeError) as e:
                _unavailable = f"libc has no inotify ({e})"
            else:
                _libc = libc
                return libc
    raise OSError(_unavailable)


def available() -> str | None:
    """None when inotify can be used here, else why not."""
    try:
        _load()
    except OSError as e:
        return str(e)
    return None


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}", path)
    return result


def add_watch(fd: int, path: str) -> int:
    """Watch path for IN_MODIFY on the inotify descriptor fd (the file must exist)."""
    libc = _load()
    return _check(
        libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY), "inotify_add_watch", path
    )


def watch(path: str) -> int:
    """A new non-blocking, close-on-exec inotify descriptor watching path."""
    libc = _load()
    fd = _check(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
    try:
        add_watch(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def drain(fd: int) -> tuple[bool, bool]:
    """Read every pending event of fd: (whether there was any, whether the
    watch went away: IN_IGNORED, when the file was deleted or unmounted)."""
    rang = lost = False
    while True:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            break
        if not data:
            break
        rang = True
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            if mask & IN_IGNORED:
                lost = True
            offset += _EVENT.size + length
    return rang, lost
