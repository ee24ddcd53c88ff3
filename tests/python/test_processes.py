"""Two OS processes exchanging messages through one database file."""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import textwrap
import time

from chanlite.layer import SQLiteChannelLayer

# A worker process: echoes every message of its process-specific channel to
# the "echoes" channel, and moves every message of "jobs" to "done", until
# it receives {"type": "stop"}.
WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from chanlite.layer import SQLiteChannelLayer

    async def main(path, name):
        layer = SQLiteChannelLayer(path=path, capacity=10000)
        mine = await layer.new_channel()
        await layer.send("hello", {"type": "hello", "name": name, "channel": mine})

        async def echo():
            while True:
                message = await layer.receive(mine)
                if message["type"] == "stop":
                    return
                await layer.send("echoes", {**message, "by": name})

        async def jobs():
            while True:
                message = await layer.receive("jobs")
                if message["type"] == "stop":
                    return
                await layer.send("done", {**message, "by": name})

        await asyncio.gather(echo(), jobs())
        await layer.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _start(path: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER, path, name])


async def test_two_processes(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, capacity=10000)
    await layer.send("warm-up", {"type": "creates the schema"})
    workers = [_start(db_path, "w1"), _start(db_path, "w2")]
    try:
        hello = [await asyncio.wait_for(layer.receive("hello"), 30) for _ in workers]
        channels = {m["name"]: m["channel"] for m in hello}
        assert set(channels) == {"w1", "w2"}

        # Process-specific: each worker echoes what is sent to it, in order.
        for i in range(100):
            for name, channel in channels.items():
                await layer.send(channel, {"type": "echo", "i": i, "to": name})
        echoes: dict[str, list[int]] = collections.defaultdict(list)
        for _ in range(200):
            message = await asyncio.wait_for(layer.receive("echoes"), 30)
            assert message["by"] == message["to"]
            echoes[message["by"]].append(message["i"])
        assert echoes == {"w1": list(range(100)), "w2": list(range(100))}

        # A normal channel received by both processes: each job done once.
        for i in range(500):
            await layer.send("jobs", {"type": "job", "i": i})
        done: collections.Counter[int] = collections.Counter()
        by: collections.Counter[str] = collections.Counter()
        for _ in range(500):
            message = await asyncio.wait_for(layer.receive("done"), 30)
            done[message["i"]] += 1
            by[message["by"]] += 1
        assert done == collections.Counter(range(500))
        for channel in channels.values():
            await layer.send(channel, {"type": "stop"})
        for _ in workers:
            await layer.send("jobs", {"type": "stop"})
        deadline = time.monotonic() + 30
        for worker in workers:
            while worker.poll() is None:
                assert time.monotonic() < deadline, "a worker did not stop"
                await asyncio.sleep(0.01)
            assert worker.returncode == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        await layer.close()
