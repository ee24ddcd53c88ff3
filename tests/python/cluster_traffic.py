"""One process of the cluster fault test (test_cluster_faults.py).

    python cluster_traffic.py ME PEER ADDRESS...

Receives on channel ``q-ME`` and on a process-specific channel that is the
one member of group ``g-ME``; once it reads ``go`` on stdin, sends messages
to ``q-PEER``, and every third one also to group ``g-PEER``, until it reads
``stop``. Prints JSON lines as it goes:
``{"ready": true}`` once its group membership is stored, ``{"acked": kind,
"i": i, "t": time}`` for every send the layer acknowledged, ``{"failed":
kind, "i": i, "error": ...}`` for every one that raised, ``{"got": kind,
"from": peer, "i": i}`` for every message received, and ``{"done": true}``
once it has received the peer's ``end`` on both channels.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from chanlite.layer import SQLiteChannelLayer


def emit(**line: Any) -> None:
    print(json.dumps(line), flush=True)


async def main(me: str, peer: str, addresses: list[str]) -> None:
    layer = SQLiteChannelLayer(cluster=addresses, capacity=100_000, lock_timeout=120)
    mine = await layer.new_channel()
    await layer.group_add(f"g-{me}", mine)
    emit(ready=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    stop = loop.run_in_executor(None, sys.stdin.readline)  # "stop"

    async def receive(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            if message["type"] == "end":
                return
            emit(got=message["kind"], **{"from": message["from"]}, i=message["i"])

    async def send(kind: str, i: int) -> None:
        message = {"type": "m", "kind": kind, "from": me, "i": i}
        try:
            if kind == "send":
                await layer.send(f"q-{peer}", message)
            else:
                delivered = await layer.group_send(f"g-{peer}", message)
                if delivered != 1:
                    emit(failed=kind, i=i, error=f"delivered to {delivered}")
                    return
        except Exception as e:
            emit(failed=kind, i=i, error=repr(e))
            return
        emit(acked=kind, i=i, t=time.time())

    receivers = [asyncio.create_task(receive(f"q-{me}")), asyncio.create_task(receive(mine))]
    i = 0
    while not stop.done():
        await send("send", i)
        if i % 3 == 0:
            await send("group", i)
        i += 1
    # The peer stops receiving at these; retried until they are through.
    for target in (f"q-{peer}", None):
        while True:
            try:
                if target is None:
                    await layer.group_send(f"g-{peer}", {"type": "end"})
                else:
                    await layer.send(target, {"type": "end"})
                break
            except Exception as e:
                emit(retry_end=repr(e))
    await asyncio.gather(*receivers)
    await layer.close()
    emit(done=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
