"""chanlite: a Django Channels channel layer inside SQLite.

The extension itself is the bundled ``chanlite`` shared library; this package
finds it (:func:`path`), loads it into :mod:`sqlite3` connections
(:func:`load`, :func:`connect`), and provides the channel layer
(:mod:`chanlite.layer`), the Django integration (:mod:`chanlite.django`), and
the extension's counters and dead letters (:func:`stats`,
:func:`dead_letters`, from :mod:`chanlite.metrics`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "ChannelStats",
    "DeadLetter",
    "ExtensionUnavailable",
    "HealthReport",
    "Status",
    "Thresholds",
    "__version__",
    "connect",
    "dead_letters",
    "health",
    "load",
    "path",
    "register_auto_extension",
    "stats",
]

ENTRY_POINT = "sqlite3_chanlite_init"

try:
    #: The installed distribution's version, which meson-python took from
    #: meson.build's ``project(version:)``, as the extension's
    #: ``chanlite_version()`` did (with a leading ``v``).
    __version__: str = importlib.metadata.version("chanlite")
except importlib.metadata.PackageNotFoundError:  # imported from a source tree
    __version__ = "0+unknown"

#: ``PRAGMA journal_size_limit`` for the connections this package configures:
#: after a burst, the WAL is cut back to this once a checkpoint has reset it
#: (without a limit it keeps its largest size for good). Just above what
#: SQLite's default auto-checkpoint lets the WAL reach (1,000 pages of 4 KB),
#: so steady traffic never truncates it; the extension's own connections use
#: the same (CHANLITE_JOURNAL_SIZE_LIMIT in ext/chanlite.h).
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024

_HOWTO = (
    "use a Python whose sqlite3 module can load extensions "
    "(sqlite3.Connection.enable_load_extension; pyenv: "
    "PYTHON_CONFIGURE_OPTS=--enable-loadable-sqlite-extensions pyenv install <version>) "
    "or whose _sqlite3 links a shared libsqlite3 (Debian/Ubuntu python3, pyenv on Linux "
    "with libsqlite3-dev installed)"
)


class ExtensionUnavailable(RuntimeError):
    """The chanlite extension cannot be loaded into this interpreter's sqlite3."""


def path() -> str:
    """The path of the chanlite extension (the bundled one unless the
    ``CHANLITE_EXTENSION`` environment variable names another, e.g. a build
    directory's ``chanlite.so``)."""
    override = os.environ.get("CHANLITE_EXTENSION")
    if override:
        return override
    here = Path(__file__).resolve().parent
    for name in ("chanlite.so", "chanlite.dylib", "chanlite.dll"):
        candidate = here / name
        if candidate.exists():
            return str(candidate)
    raise ExtensionUnavailable(
        f"chanlite: the extension is not bundled in {here}: install the package with "
        "`pip install chanlite` (or `pip install .` from a checkout), or set "
        "CHANLITE_EXTENSION to a built chanlite.so"
    )


# ---- the ctypes fallback: sqlite3_auto_extension on _sqlite3's libsqlite3 ----

_lock = threading.Lock()
_libsqlite: ctypes.CDLL | None = None
_extension: ctypes.CDLL | None = None  # kept alive: SQLite holds its entry point
_api: int | None = None
_registered = False

_INIT = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p
)


def _sqlite3_library_path() -> str | None:
    """The shared libsqlite3 that this interpreter's _sqlite3 module uses,
    or None when it has its own copy built in."""
    import _sqlite3

    module_file = getattr(_sqlite3, "__file__", None)
    if module_file is None:  # built into the interpreter
        return None
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and Path(parts[5]).name.startswith("libsqlite3"):
                return parts[5]
        return None
    found = ctypes.util.find_library("sqlite3")  # macOS and others: checked later
    return found


def _library() -> ctypes.CDLL:
    global _libsqlite
    if _libsqlite is None:
        lib_path = _sqlite3_library_path()
        if lib_path is None:
            raise ExtensionUnavailable(
                "chanlite: this Python's sqlite3 can neither load extensions nor "
                f"reach a shared libsqlite3: {_HOWTO}"
            )
        lib = ctypes.CDLL(lib_path)
        lib.sqlite3_libversion.restype = ctypes.c_char_p
        version = lib.sqlite3_libversion().decode()
        if version != sqlite3.sqlite_version:
            raise ExtensionUnavailable(
                f"chanlite: {lib_path} is SQLite {version} but this Python's sqlite3 "
                f"uses {sqlite3.sqlite_version} built in: {_HOWTO}"
            )
        lib.sqlite3_auto_extension.argtypes = [ctypes.c_void_p]
        lib.sqlite3_auto_extension.restype = ctypes.c_int
        lib.sqlite3_cancel_auto_extension.argtypes = [ctypes.c_void_p]
        lib.sqlite3_cancel_auto_extension.restype = ctypes.c_int
        lib.sqlite3_free.argtypes = [ctypes.c_void_p]
        lib.sqlite3_free.restype = None
        lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.sqlite3_db_filename.restype = ctypes.c_char_p
        _libsqlite = lib
    return _libsqlite


def _entry_point() -> Any:
    global _extension
    if _extension is None:
        _extension = ctypes.CDLL(path())
    init = _extension[ENTRY_POINT]
    init.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    init.restype = ctypes.c_int
    return init


def _check(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("SELECT chanlite_version()").fetchone()
    except sqlite3.OperationalError as e:
        raise ExtensionUnavailable(
            f"chanlite: registered the extension, but this Python's sqlite3 does not use "
            f"that libsqlite3 ({e}): {_HOWTO}"
        ) from e


def register_auto_extension() -> None:
    """Make every sqlite3 connection opened from now on in this process have
    chanlite (``sqlite3_auto_extension`` on the libsqlite3 that ``_sqlite3``
    uses, through ctypes). Needs no ``enable_load_extension``; idempotent."""
    global _registered
    with _lock:
        if _registered:
            return
        lib = _library()
        init = _entry_point()
        rc = lib.sqlite3_auto_extension(ctypes.cast(init, ctypes.c_void_p))
        if rc != 0:
            raise ExtensionUnavailable(f"chanlite: sqlite3_auto_extension failed ({rc})")
        _registered = True
    probe = sqlite3.connect(":memory:")
    try:
        _check(probe)
    finally:
        probe.close()


def _api_routines() -> int:
    """SQLite's extension API table (sqlite3_api_routines*), which SQLite
    hands to every auto-extension: caught once by a throwaway one."""
    global _api
    with _lock:
        if _api is not None:
            return _api
        lib = _library()
        caught: list[int] = []

        def catch(db: int, err: Any, api: int) -> int:
            caught.append(api)
            return 0

        callback = _INIT(catch)
        lib.sqlite3_auto_extension(ctypes.cast(callback, ctypes.c_void_p))
        try:
            sqlite3.connect(":memory:").close()
        finally:
            lib.sqlite3_cancel_auto_extension(ctypes.cast(callback, ctypes.c_void_p))
        if not caught or not caught[0]:
            raise ExtensionUnavailable(
                f"chanlite: this Python's sqlite3 does not use {lib._name}: {_HOWTO}"
            )
        _api = caught[0]
        return _api


def _db_handle(conn: sqlite3.Connection) -> int:
    """The sqlite3* of a CPython sqlite3.Connection: the first field after the
    object header in every CPython 3 (Modules/_sqlite/connection.h)."""
    if sys.implementation.name != "cpython" or not isinstance(conn, sqlite3.Connection):
        raise ExtensionUnavailable(
            f"chanlite: cannot reach this connection's sqlite3 handle; open it with "
            f"chanlite.connect() instead, or {_HOWTO}"
        )
    handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
    if not handle:
        raise sqlite3.ProgrammingError("chanlite: cannot load into a closed connection")
    return handle


def _init_directly(conn: sqlite3.Connection) -> None:
    lib = _library()
    api = _api_routines()
    db = _db_handle(conn)
    # Make sure the handle is this connection's: its main file must match.
    expected = conn.execute("PRAGMA database_list").fetchone()[2] or ""
    actual = (lib.sqlite3_db_filename(db, b"main") or b"").decode()
    if actual != expected:
        raise ExtensionUnavailable(
            f"chanlite: cannot reach this connection's sqlite3 handle; open it with "
            f"chanlite.connect() instead, or {_HOWTO}"
        )
    err = ctypes.c_char_p()
    rc = _entry_point()(db, ctypes.byref(err), api)
    if rc != 0:
        message = err.value.decode(errors="replace") if err.value else f"error {rc}"
        if err.value:
            lib.sqlite3_free(err)
        raise sqlite3.OperationalError(message)


def _can_load_extensions() -> bool:
    return hasattr(sqlite3.Connection, "enable_load_extension")


def load(conn: sqlite3.Connection) -> None:
    """Load chanlite into an open sqlite3 connection.

    Uses ``enable_load_extension`` where the interpreter has it; otherwise
    calls the extension's entry point on the connection's handle through
    ctypes (CPython whose ``_sqlite3`` links a shared libsqlite3). Raises
    :class:`ExtensionUnavailable`, saying what to install, where neither works.
    """
    if _can_load_extensions():
        conn.enable_load_extension(True)
        try:
            conn.load_extension(path())
        finally:
            conn.enable_load_extension(False)
        return
    _init_directly(conn)
    _check(conn)


def connect(database: str | os.PathLike[str], **kwargs: Any) -> sqlite3.Connection:
    """``sqlite3.connect(database, **kwargs)`` with chanlite loaded."""
    conn: sqlite3.Connection
    if _can_load_extensions():
        conn = sqlite3.connect(database, **kwargs)
        try:
            load(conn)
        except BaseException:
            conn.close()
            raise
        return conn
    register_auto_extension()
    conn = sqlite3.connect(database, **kwargs)
    try:
        _check(conn)
    except BaseException:
        conn.close()
        raise
    return conn


# Last: these modules use what this one defines above.
from chanlite.healthcheck import HealthReport, Status, Thresholds, health  # noqa: E402
from chanlite.metrics import ChannelStats, DeadLetter, dead_letters, stats  # noqa: E402
