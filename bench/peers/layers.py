"""Channel layers under test: one factory per layer, and how a process opens one.

A factory runs in the parent and returns a picklable ``LayerSpec`` (a ``CHANNEL_LAYERS`` entry
plus the Django settings the layer needs), or raises ``Unavailable`` with the reason, which the
report shows as "n/a (reason)". ``open_layer`` runs in each worker process: it configures Django
with ``CHANNEL_LAYERS = {"default": ...}`` and returns ``channels.layers.get_channel_layer()``,
so every layer is built exactly as a Channels project would build it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Same capacity for every layer that has one, well above anything the workloads keep in flight
# (the point-to-point producer keeps at most WINDOW messages unreceived), so ChannelFull is a
# safety net, never the flow control.
CAPACITY = 1000
# Environment variable naming the file the worker processes send their stderr to.
WORKER_LOG = "CHANLITE_PEERS_WORKER_LOG"


class Unavailable(Exception):
    """A layer cannot be measured here; the message says why."""


@dataclass(frozen=True)
class LayerSpec:
    name: str
    backend: str
    config: dict[str, Any]
    # False: the layer only works inside one process (InMemoryChannelLayer); every workload then
    # runs its producer and consumers as tasks of one process.
    cross_process: bool = True
    databases: dict[str, Any] = field(default_factory=dict)
    apps: tuple[str, ...] = ()
    migrate: tuple[str, ...] = ()  # apps to migrate once before the first run
    sys_path: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    server: str = ""  # "redis" or "postgres": the server whose CPU counts with the layer's


@dataclass
class FactoryContext:
    repo: Path
    tmp: Path
    redis_url: str | None = None
    redis_error: str = "redis-server not started"
    postgres: dict[str, Any] | None = None
    postgres_error: str = "PostgreSQL not started"
    chanlite_so: Path | None = None
    chanlite_error: str = "extension not built"


def _need_module(name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise Unavailable(f"Python module {name} is not installed")


def _sqlite_django_db(path: Path) -> dict[str, Any]:
    # channels-lite's documented "SQLite Performance Settings" (WAL, IMMEDIATE, busy timeout).
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 5,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=10000; "
                "PRAGMA temp_store=MEMORY; PRAGMA busy_timeout=5000;"
            ),
        },
    }


def chanlite(ctx: FactoryContext) -> LayerSpec:
    if ctx.chanlite_so is None:
        raise Unavailable(ctx.chanlite_error)
    python_dir = ctx.repo / "python"
    if (
        not (python_dir / "chanlite" / "layer.py").exists()
        and not (python_dir / "chanlite" / "layer").is_dir()
    ):
        raise Unavailable("python/chanlite/layer.py does not exist yet")
    return LayerSpec(
        name="chanlite",
        backend="chanlite.layer.SQLiteChannelLayer",
        config={"path": str(ctx.tmp / "chanlite.db"), "capacity": CAPACITY},
        sys_path=(str(python_dir),),
        env={"CHANLITE_EXTENSION": str(ctx.chanlite_so)},
    )


def channels_redis(ctx: FactoryContext) -> LayerSpec:
    _need_module("channels_redis")
    if ctx.redis_url is None:
        raise Unavailable(ctx.redis_error)
    return LayerSpec(
        name="channels_redis",
        backend="channels_redis.core.RedisChannelLayer",
        config={"hosts": [ctx.redis_url], "capacity": CAPACITY},
        server="redis",
    )


def channels_redis_pubsub(ctx: FactoryContext) -> LayerSpec:
    _need_module("channels_redis")
    if ctx.redis_url is None:
        raise Unavailable(ctx.redis_error)
    # RedisPubSubChannelLayer has no capacity: pub/sub drops nothing and queues nothing.
    return LayerSpec(
        name="channels_redis pubsub",
        backend="channels_redis.pubsub.RedisPubSubChannelLayer",
        config={"hosts": [ctx.redis_url]},
        server="redis",
    )


def channels_lite_orm(ctx: FactoryContext) -> LayerSpec:
    _need_module("channels_lite")
    # Its default serializer is JSON, which cannot carry the bytes payload; msgpack is its own
    # documented alternative (and what the AIO layer uses by default).
    return LayerSpec(
        name="channels-lite ORM",
        backend="channels_lite.layers.core.SQLiteChannelLayer",
        config={"database": "default", "capacity": CAPACITY, "serializer_format": "msgpack"},
        databases={"default": _sqlite_django_db(ctx.tmp / "channels_lite_orm.db")},
        apps=("channels_lite",),
        migrate=("channels_lite",),
    )


def channels_lite_aio(ctx: FactoryContext) -> LayerSpec:
    _need_module("channels_lite")
    for module in ("aiosqlite", "aiosqlitepool"):
        _need_module(module)
    return LayerSpec(
        name="channels-lite AIO",
        backend="channels_lite.layers.aio.AIOSQLiteChannelLayer",
        config={"database": "default", "capacity": CAPACITY},
        databases={"default": _sqlite_django_db(ctx.tmp / "channels_lite_aio.db")},
        apps=("channels_lite",),
        migrate=("channels_lite",),
    )


def channels_postgres(ctx: FactoryContext) -> LayerSpec:
    _need_module("channels_postgres")
    _need_module("psycopg")
    if ctx.postgres is None:
        raise Unavailable(ctx.postgres_error)
    # The database dict as Django completes it (ConnectionHandler.configure_settings fills these
    # in place in a project's DATABASES); channels-postgres passes CONFIG to a DatabaseWrapper.
    db = {
        "ENGINE": "django.db.backends.postgresql",
        **ctx.postgres,
        "ATOMIC_REQUESTS": False,
        "AUTOCOMMIT": True,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "OPTIONS": {},
        "TIME_ZONE": None,
        "TEST": {},
    }
    return LayerSpec(
        name="channels-postgres",
        backend="channels_postgres.core.PostgresChannelLayer",
        config=dict(db),
        databases={"default": db},
        apps=("channels_postgres",),
        migrate=("channels_postgres",),
        server="postgres",
    )


def in_memory(ctx: FactoryContext) -> LayerSpec:
    _need_module("channels")
    return LayerSpec(
        name="InMemory",
        backend="channels.layers.InMemoryChannelLayer",
        config={"capacity": CAPACITY},
        cross_process=False,
    )


FACTORIES: list[tuple[str, Callable[[FactoryContext], LayerSpec]]] = [
    ("chanlite", chanlite),
    ("channels_redis", channels_redis),
    ("channels_redis pubsub", channels_redis_pubsub),
    ("channels-lite ORM", channels_lite_orm),
    ("channels-lite AIO", channels_lite_aio),
    ("channels-postgres", channels_postgres),
    ("InMemory", in_memory),
]


def build_chanlite(repo: Path, log: Path) -> Path:
    """Build the extension into build-peers/ (tests and C benches off); return the .so."""
    build = repo / "build-peers"
    steps: list[list[str]] = []
    if not (build / "build.ninja").exists():
        steps.append(["meson", "setup", "build-peers", "-Dtests=false", "-Dbench=false"])
    steps.append(["meson", "compile", "-C", "build-peers"])
    with log.open("ab") as out:
        for cmd in steps:
            try:
                done = subprocess.run(
                    cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise Unavailable(f"{' '.join(cmd[:2])} failed: {exc}") from exc
            if done.returncode != 0:
                raise Unavailable(f"`{' '.join(cmd)}` exited {done.returncode} (see {log})")
    for name in ("chanlite.so", "chanlite.dylib", "libchanlite.so"):
        if (build / name).exists():
            return build / name
    raise Unavailable("build-peers has no chanlite.so after compiling")


# ---------------------------------------------------------------------------------------------
# In the worker processes


def _configure_django(spec: LayerSpec) -> None:
    for key, value in spec.env.items():
        os.environ[key] = value
    for entry in reversed(spec.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            DATABASES=spec.databases,
            INSTALLED_APPS=["channels", *spec.apps],
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            CHANNEL_LAYERS={"default": {"BACKEND": spec.backend, "CONFIG": spec.config}},
            LOGGING_CONFIG=None,
        )
        django.setup()


def open_layer(spec: LayerSpec) -> Any:
    """Return the layer as Channels builds it from CHANNEL_LAYERS["default"]."""
    _configure_django(spec)
    # channel_layers[alias] is what get_channel_layer() returns, except that get_channel_layer()
    # turns any KeyError raised while building the layer into None, hiding the reason.
    from channels.layers import channel_layers

    return channel_layers["default"]


def migrate(spec: LayerSpec) -> None:
    _configure_django(spec)
    from django.core.management import call_command

    for app in spec.migrate:
        call_command("migrate", app, verbosity=0, interactive=False)
