"""mysite.asgi, with the channel layer created and used at import time.

`gunicorn --preload` imports the application once, in the master, and then
forks its workers: whatever the import did to the channel layer (connections
opened, a receive loop started, a process-specific channel made) is inherited
by every worker. This module does a full round trip at import, so serving it
with --preload shows that a layer used before fork() works in the forked
workers:

    gunicorn -k uvicorn.workers.UvicornWorker --workers 2 --preload \\
        mysite.asgi_preload:application
"""

import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from mysite.asgi import application

__all__ = ["application"]


async def _round_trip() -> None:
    layer = get_channel_layer()
    assert layer is not None, "chanlite: CHANNEL_LAYERS has no default layer"
    # A process-specific channel, reached through a group ...
    channel = await layer.new_channel()
    group = f"preload-{uuid.uuid4().hex}"
    await layer.group_add(group, channel)
    await layer.group_send(group, {"type": "preload.check", "via": "group"})
    got = await layer.receive(channel)
    assert got == {"type": "preload.check", "via": "group"}, got
    await layer.group_discard(group, channel)
    # ... and a plain channel.
    plain = f"preload-{uuid.uuid4().hex}"
    await layer.send(plain, {"type": "preload.check", "via": "send"})
    got = await layer.receive(plain)
    assert got == {"type": "preload.check", "via": "send"}, got


async_to_sync(_round_trip)()
