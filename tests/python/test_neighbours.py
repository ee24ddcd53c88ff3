"""Noisy neighbours: a flood on one channel, or 10,000 hungry channels in one
process, must not starve the other channels. These tests assert what can be
checked without timing: while the flood runs, every message of a quiet
channel is sent (no ChannelFull, no DatabaseLocked) and received, once, in
order, and the flood was still running when the last one arrived. How much
the flood slows them is measured by bench/neighbours (results in
bench/results/neighbours.md)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable

import chanlite
from chanlite.layer import SQLiteChannelLayer

QUIET = 50  # messages on each quiet channel
CROWD = 10_000
WAIT = 60.0  # bounds every wait: a starved channel fails here, not by hanging


class Flood:
    """A thread that runs one chanlite call in a loop on a connection of its
    own (as another process would) until stopped; counts its calls."""

    def __init__(self, db_path: str, sql: str, params: Callable[[int], tuple[object, ...]]) -> None:
        self.calls = 0
        self.errors: list[str] = []
        self.flooding = threading.Event()  # set after its first 10 calls
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(db_path, sql, params))

    def _run(self, db_path: str, sql: str, params: Callable[[int], tuple[object, ...]]) -> None:
        conn = chanlite.connect(db_path, isolation_level=None, timeout=5)
        try:
            while not self._stop.is_set():
                try:
                    conn.execute(sql, params(self.calls)).fetchone()
                except sqlite3.Error as e:
                    if "channel full" not in str(e):
                        self.errors.append(str(e))
                self.calls += 1
                if self.calls == 10:
                    self.flooding.set()
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    async def start(self) -> None:
        """Start, and return once it floods."""
        self._thread.start()
        assert await asyncio.to_thread(self.flooding.wait, WAIT), "the flood did not start"

    async def __aenter__(self) -> Flood:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, WAIT)


async def send_and_receive_quiet(
    sender: SQLiteChannelLayer, receiver: SQLiteChannelLayer, channel: str
) -> list[int]:
    """QUIET messages sent on channel while they are received; the numbers
    received, in the order received."""
    got: list[int] = []

    async def receive_all() -> None:
        while len(got) < QUIET:
            got.append((await receiver.receive(channel))["n"])

    receiving = asyncio.create_task(receive_all())
    for n in range(QUIET):
        await sender.send(channel, {"type": "quiet", "n": n})
    await asyncio.wait_for(receiving, WAIT)
    return got


async def test_a_channel_at_capacity_flooded_does_not_starve_the_others(db_path: str) -> None:
    capacities = {"noisy": 10}
    layer = SQLiteChannelLayer(path=db_path, capacity=QUIET, channel_capacity=capacities)
    other = SQLiteChannelLayer(path=db_path, capacity=QUIET, channel_capacity=capacities)
    try:
        for n in range(10):
            await layer.send("noisy", {"n": n})  # at capacity: every flood send is refused
        data = layer.serialize({"type": "flood"})
        async with Flood(db_path, "SELECT channel_send('noisy', ?)", lambda _: (data,)) as flood:
            before = flood.calls
            got = await send_and_receive_quiet(layer, other, "quiet")
            assert flood.running and flood.calls > before, "the flood stopped early"
        assert flood.errors == []
        assert got == list(range(QUIET))  # every one, once, in order, during the flood
    finally:
        await layer.close()
        await other.close()


async def test_ten_thousand_hungry_channels_do_not_starve_the_process(db_path: str) -> None:
    # The crowd's prefix! queue can hold a message for each of its channels.
    layer = SQLiteChannelLayer(
        path=db_path, capacity=QUIET, channel_capacity={"crowd.*": 2 * CROWD}
    )
    sender = SQLiteChannelLayer(
        path=db_path, capacity=QUIET, channel_capacity={"crowd.*": 2 * CROWD}
    )
    crowd = [await layer.new_channel("crowd") for _ in range(CROWD)]
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in crowd]
    try:
        neighbour = await layer.new_channel("crowd")  # in the crowd's own prefix! queue
        await asyncio.sleep(0)
        data = layer.serialize({"type": "flood"})
        # Another process sends to the crowd, round and round, as fast as it can.
        async with Flood(
            db_path, "SELECT channel_send(?, ?)", lambda n: (crowd[n % CROWD], data)
        ) as flood:
            got = await send_and_receive_quiet(sender, layer, "quiet")
            got_local = await send_and_receive_quiet(sender, layer, neighbour)
            # Every crowd channel is served too: none starves another.
            done, pending = await asyncio.wait(waiting, timeout=WAIT)
            assert flood.running, "the flood stopped early"
        assert flood.errors == []
        assert not pending, f"{len(pending)} of {len(waiting)} crowd receives starved"
        assert got == list(range(QUIET))
        assert got_local == list(range(QUIET))
        assert all(task.result() == {"type": "flood"} for task in done)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await layer.close()
        await sender.close()
