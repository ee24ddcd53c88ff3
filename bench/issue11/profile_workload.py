#!/usr/bin/env python3
"""The workload that bench/results/profile.md profiles: one process, one
producer coroutine and one consumer coroutine on one channel, 100 B
messages, sent as fast as the consumer keeps up (at most 100 in flight).

    py-spy record --native --format raw -o out.txt -- python3 bench/issue11/profile_workload.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

from chanlite.layer import SQLiteChannelLayer

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
WINDOW = 100


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        layer = SQLiteChannelLayer(path=os.path.join(d, "profile.db"), capacity=1000)
        body = b"x" * 100
        room = asyncio.Semaphore(WINDOW)

        async def consume() -> None:
            for _ in range(N):
                await layer.receive("profile")
                room.release()

        consumer = asyncio.create_task(consume())
        start = time.monotonic()
        for i in range(N):
            await room.acquire()
            await layer.send("profile", {"type": "m", "i": i, "b": body})
        await consumer
        elapsed = time.monotonic() - start
        print(f"{N} messages in {elapsed:.2f} s: {N / elapsed:,.0f} msg/s", file=sys.stderr)
        await layer.close()


asyncio.run(main())
