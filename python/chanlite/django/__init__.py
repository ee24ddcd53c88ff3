"""Django integration: chanlite in Django's own sqlite3 connections, and
layer operations on them, inside the app's transactions.

Giving Django's connections the extension, either way:

* ``"ENGINE": "chanlite.django.backend"`` (Django's sqlite3 backend that also
  loads chanlite and sets WAL and synchronous=NORMAL), or
* keep Django's ENGINE and connect :func:`load_extension` to the
  ``connection_created`` signal (``chanlite.django.install()`` does that).

The transactional outbox: with the layer configured on a Django database
(``CONFIG: {"database": "default"}``), :func:`send` and :func:`group_send` run
on Django's current connection, so inside ``transaction.atomic()`` the message
is committed with the app's data, or never sent if the block rolls back::

    with transaction.atomic():
        order.save()
        chanlite.django.send("orders", {"type": "order.created", "id": order.pk})
"""

from __future__ import annotations

import os
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from channels.exceptions import ChannelFull
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

import chanlite

__all__ = [
    "group_add",
    "group_discard",
    "group_send",
    "install",
    "load_extension",
    "send",
]


def load_extension(
    sender: Any = None, connection: BaseDatabaseWrapper | None = None, **kwargs: Any
) -> None:
    """A ``connection_created`` receiver: loads chanlite into every new
    Django sqlite3 connection."""
    if connection is not None and connection.vendor == "sqlite":
        conn = connection.connection
        try:
            conn.execute("SELECT chanlite_version()")
        except Exception:
            chanlite.load(conn)


def install() -> None:
    """Connect :func:`load_extension` to ``connection_created`` (call it from
    an AppConfig.ready() or settings), for projects that keep Django's ENGINE."""
    connection_created.connect(load_extension, dispatch_uid="chanlite.load_extension")


def _layer(layer: str) -> Any:
    from channels.layers import get_channel_layer

    from chanlite.layer import SQLiteChannelLayer

    instance = get_channel_layer(layer)
    if not isinstance(instance, SQLiteChannelLayer):
        raise ImproperlyConfigured(
            f"chanlite: channel layer {layer!r} is not chanlite.layer.SQLiteChannelLayer"
        )
    return instance


def _cursor(instance: Any, using: str | None) -> Any:
    alias = using or instance.database or DEFAULT_DB_ALIAS
    connection = connections[alias]
    if instance.database != alias:
        mine = os.path.realpath(instance.database_path())
        theirs = os.path.realpath(str(connection.settings_dict["NAME"]))
        if mine != theirs:
            raise ImproperlyConfigured(
                f"chanlite: the channel layer's database is {mine}, not database "
                f"{alias!r} ({theirs}): configure the layer with "
                f"CONFIG {{'database': {alias!r}}} to send in that database's transactions"
            )
    return connection.cursor()


def _run(layer: str, using: str | None, sql: str, *params: Any) -> Any:
    instance = _layer(layer)
    with _cursor(instance, using) as cursor:
        try:
            cursor.execute(sql, params)
        except IntegrityError as e:
            text = str(e)
            if text.startswith("chanlite: channel full"):
                raise ChannelFull(text.partition("channel full: ")[2]) from e
            raise
        except Exception as e:
            text = str(e)
            if "no such function" in text:
                raise ImproperlyConfigured(
                    "chanlite: Django's connection does not have the extension: use "
                    "ENGINE 'chanlite.django.backend' or call chanlite.django.install()"
                ) from e
            if text.startswith(("chanlite: invalid channel", "chanlite: invalid group")):
                raise TypeError(text) from e
            raise
        return cursor.fetchone()[0]


def send(
    channel: str,
    message: dict[str, Any],
    *,
    using: str | None = None,
    layer: str = DEFAULT_CHANNEL_LAYER,
) -> int:
    """Send on Django's connection ``using`` (the layer's database by
    default): inside ``transaction.atomic()`` the message commits or rolls
    back with it. Returns the message id; raises ChannelFull."""
    instance = _layer(layer)
    instance._check_message(message)
    instance.require_valid_channel_name(channel)
    result: int = _run(
        layer, using, "SELECT channel_send(%s, %s)", channel, instance.serialize(message)
    )
    return result


def group_send(
    group: str,
    message: dict[str, Any],
    *,
    using: str | None = None,
    layer: str = DEFAULT_CHANNEL_LAYER,
) -> int:
    """group_send on Django's connection, in its transaction. Returns how many
    members it was delivered to."""
    instance = _layer(layer)
    instance._check_message(message)
    instance.require_valid_group_name(group)
    result: int = _run(
        layer, using, "SELECT group_send(%s, %s)", group, instance.serialize(message)
    )
    return result


def group_add(
    group: str, channel: str, *, using: str | None = None, layer: str = DEFAULT_CHANNEL_LAYER
) -> None:
    """group_add on Django's connection, in its transaction."""
    instance = _layer(layer)
    instance.require_valid_group_name(group)
    instance.require_valid_channel_name(channel)
    _run(layer, using, "SELECT group_add(%s, %s)", group, channel)


def group_discard(
    group: str, channel: str, *, using: str | None = None, layer: str = DEFAULT_CHANNEL_LAYER
) -> None:
    """group_discard on Django's connection, in its transaction."""
    instance = _layer(layer)
    instance.require_valid_group_name(group)
    instance.require_valid_channel_name(channel)
    _run(layer, using, "SELECT group_discard(%s, %s)", group, channel)
