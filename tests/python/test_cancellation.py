"""Cancellation torture: thousands of receive() calls cancelled at random
points while messages flow. Every message sent is received exactly once."""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from pathlib import Path

import pytest

from chanlite.layer import SQLiteChannelLayer

MESSAGES_PER_CHANNEL = 600


@pytest.fixture(params=["file", "memory"])
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """On a database file, and in test mode (an in-memory database)."""
    if request.param == "memory":
        return f"file:chanlite-torture-{uuid.uuid4().hex}?mode=memory&cache=shared"
    return str(tmp_path / "layer.sqlite3")


async def _cancel_at_random(
    layer: SQLiteChannelLayer, channel: str, rng: random.Random
) -> tuple[dict[str, object] | None, bool]:
    """One receive(), cancelled at a random point: before it starts, after a
    few loop turns, or after a short sleep. Returns what it received (if it
    completed after all) and whether the cancellation took."""
    task = asyncio.create_task(layer.receive(channel))
    how = rng.random()
    if how < 0.2:
        pass  # cancelled before its first step
    elif how < 0.7:
        for _ in range(rng.randrange(1, 8)):
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(rng.random() * 0.004)
    task.cancel()
    try:
        return await task, False
    except asyncio.CancelledError:
        return None, True


async def _consume(
    layer: SQLiteChannelLayer,
    channel: str,
    received: collections.Counter[tuple[str, int]],
    expected: int,
    rng: random.Random,
    stats: collections.Counter[str],
    total: dict[str, int],
) -> None:
    deadline = time.monotonic() + 60
    while total[channel] < expected:
        assert time.monotonic() < deadline, f"{channel}: {total[channel]}/{expected} received"
        if rng.random() < 0.85:
            message, cancelled = await _cancel_at_random(layer, channel, rng)
            stats["cancelled" if cancelled else "completed despite cancel"] += 1
        else:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.05)
                stats["completed"] += 1
            except TimeoutError:
                message = None
                stats["timed out"] += 1
        if message is not None:
            received[(str(message["channel"]), int(message["i"]))] += 1  # type: ignore[call-overload]
            total[channel] += 1


async def _produce(
    layer: SQLiteChannelLayer, channels: list[str], rng: random.Random, per_channel: int
) -> None:
    for i in range(per_channel):
        for channel in channels:
            await layer.send(channel, {"type": "torture", "channel": channel, "i": i})
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() * 0.002)


@pytest.mark.parametrize("loop_calls", [True, False], ids=["on-loop", "in-pool"])
async def test_cancelled_receives_lose_nothing(db_path: str, loop_calls: bool) -> None:
    """With pops on the event loop's thread (the default) and all in the
    pool. Pops on the loop cannot be interrupted, so fewer receives are
    caught mid-way: that case sends more, for as many cancellations."""
    rng = random.Random(20240601)
    per_channel = MESSAGES_PER_CHANNEL * (3 if loop_calls else 1)
    layer = SQLiteChannelLayer(path=db_path, capacity=100_000, loop_calls=loop_calls)
    # Two process-specific channels (one receiver, shared buffers) and one
    # normal channel, received by this layer and by a second instance (as
    # another process would) at once.
    local = [await layer.new_channel(), await layer.new_channel()]
    other = SQLiteChannelLayer(path=db_path, capacity=100_000, loop_calls=loop_calls)
    channels = [*local, "torture-normal"]
    received: collections.Counter[tuple[str, int]] = collections.Counter()
    stats: collections.Counter[str] = collections.Counter()
    total = {channel: 0 for channel in channels}

    normal_total = {"torture-normal": 0}
    consumers = [
        _consume(layer, channel, received, per_channel, rng, stats, total) for channel in local
    ]

    async def normal_consumer(instance: SQLiteChannelLayer) -> None:
        await _consume(instance, "torture-normal", received, per_channel, rng, stats, normal_total)

    await asyncio.gather(
        _produce(layer, channels, rng, per_channel),
        *consumers,
        normal_consumer(layer),
        normal_consumer(other),
    )
    expected = {(channel, i) for channel in channels for i in range(per_channel)}
    duplicates = {key: n for key, n in received.items() if n != 1}
    assert not duplicates, f"received more than once: {list(duplicates)[:10]}"
    assert set(received) == expected, f"lost: {sorted(expected - set(received))[:10]}"
    print(dict(stats))
    assert stats["cancelled"] >= 1000, stats
    # Nothing left behind, in SQLite or in a buffer.
    for instance in (layer, other):
        with instance._lock:
            assert all(not q.buffers for q in instance._queues.values())
    await layer.flush()
    await layer.close()
    await other.close()


async def test_cancelled_receive_leaves_message_for_next(db_path: str) -> None:
    """A message the receiver popped for a receive() that was cancelled is
    the next receive()'s."""
    layer = SQLiteChannelLayer(path=db_path)
    channel = await layer.new_channel()
    for attempt in range(200):
        waiting = asyncio.create_task(layer.receive(channel))
        await layer.send(channel, {"type": "m", "i": attempt})
        for _ in range(attempt % 7):
            await asyncio.sleep(0)
        waiting.cancel()
        try:
            got = await waiting
        except asyncio.CancelledError:
            got = await asyncio.wait_for(layer.receive(channel), 5)
        assert got["i"] == attempt
    await layer.close()
