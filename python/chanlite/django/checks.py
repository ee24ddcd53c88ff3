"""The chanlite system check: :func:`chanlite.health` on the database of
every chanlite channel layer in CHANNEL_LAYERS (``manage.py check --tag
chanlite``; it also runs with every command that runs checks).

Message ids, one per health check: ``chanlite.E001`` the database cannot be
used (missing directory, not a database, not writable, write lock not had),
``chanlite.W001`` writers hold its lock long; ``chanlite.E002`` the extension
does not load; ``chanlite.W003`` not in WAL mode; ``chanlite.W004`` the WAL
is large; ``chanlite.W005`` a queue is (nearly) full; ``chanlite.W006`` a
message has waited long; ``chanlite.E007`` CHANLITE_HEALTH is invalid.

Queues, message ages and WAL size describe load, not configuration, so even
past their error thresholds they are Warnings: a system check Error stops
``runserver`` and ``migrate``, and a busy layer must not keep a server from
starting. The health endpoint and ``chanlite health`` report them as errors.

Thresholds come from the CHANLITE_HEALTH setting (a dict of
:class:`chanlite.Thresholds` fields). A database file that does not exist yet
is not checked (the layer creates it on first use), nor is test mode's
in-memory database.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from chanlite.healthcheck import HealthReport, Status, Thresholds, health

__all__ = ["IDS", "check_channel_layers", "layer_database", "layer_health", "thresholds"]

#: health check name -> the number in its message id
IDS = {
    "database": 1,
    "extension": 2,
    "journal_mode": 3,
    "wal_size": 4,
    "queues": 5,
    "oldest_message": 6,
}
#: Checks whose error status stays a Warning (see the module's docstring).
LOAD_CHECKS = {"wal_size", "queues", "oldest_message"}


def layer_database(alias: str) -> str:
    """The database file (or test mode's URI) of chanlite channel layer
    ``alias``. Raises LookupError when there is no such layer and TypeError
    when it is not a chanlite one."""
    from channels.layers import channel_layers

    from chanlite.layer import SQLiteChannelLayer

    if alias not in getattr(settings, "CHANNEL_LAYERS", {}):
        raise LookupError(f"chanlite: no channel layer {alias!r} in CHANNEL_LAYERS")
    layer = channel_layers[alias]
    if not isinstance(layer, SQLiteChannelLayer):
        raise TypeError(
            f"chanlite: channel layer {alias!r} is {type(layer).__module__}."
            f"{type(layer).__qualname__}, not chanlite.layer.SQLiteChannelLayer"
        )
    return layer.database_path()


def _is_chanlite(config: dict[str, Any]) -> bool:
    backend = str(config.get("BACKEND", ""))
    return backend.startswith("chanlite.")


def _creatable_directory(path: str) -> bool:
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(directory) and os.access(directory, os.W_OK)


def thresholds() -> Thresholds:
    """The thresholds settings.CHANLITE_HEALTH sets (ValueError if it is invalid)."""
    try:
        return Thresholds.from_mapping(dict(getattr(settings, "CHANLITE_HEALTH", {})))
    except TypeError as e:
        raise ValueError(f"chanlite: invalid CHANLITE_HEALTH: {e}") from e


def layer_health(alias: str = DEFAULT_CHANNEL_LAYER) -> HealthReport:
    """:func:`chanlite.health` of channel layer ``alias``'s database, with
    the CHANLITE_HEALTH thresholds (a database not created yet is healthy):
    what a health endpoint returns."""
    return health(layer_database(alias), thresholds=thresholds(), missing_ok=True)


def _in_memory(path: str) -> bool:
    return path == ":memory:" or "mode=memory" in path


@register("chanlite")
def check_channel_layers(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    try:
        limits = thresholds()
    except ValueError as e:
        return [Error(str(e), hint="fix settings.CHANLITE_HEALTH", id="chanlite.E007")]
    messages: list[CheckMessage] = []
    for alias, config in getattr(settings, "CHANNEL_LAYERS", {}).items():
        if _is_chanlite(config):
            messages += _check_layer(alias, limits)
    return messages


def _check_layer(alias: str, limits: Thresholds) -> list[CheckMessage]:
    where = f"channel layer {alias!r}"
    try:
        path = layer_database(alias)
    except Exception as e:
        return [
            Error(f"chanlite: {where}: {str(e).removeprefix('chanlite: ')}", id="chanlite.E001")
        ]
    if _in_memory(path):
        return []
    if not os.path.exists(path) and not _creatable_directory(path):
        return [
            Error(
                f"chanlite: {where}: cannot create its database {path}: "
                f"{os.path.dirname(os.path.abspath(path))} is not a writable directory",
                id="chanlite.E001",
            )
        ]
    report = health(path, thresholds=limits, missing_ok=True)
    messages: list[CheckMessage] = []
    for check in report.checks:
        if check.status is Status.OK:
            continue
        number = IDS.get(check.name, 0)
        text = f"chanlite: {where} ({path}): {check.name}: {check.summary}"
        if check.status is Status.ERROR and check.name not in LOAD_CHECKS:
            messages.append(Error(text, id=f"chanlite.E{number:03d}"))
        else:
            if check.status is Status.ERROR:
                text += " (over the error threshold)"
            messages.append(Warning(text, id=f"chanlite.W{number:03d}"))
    return messages
