"""Cancellation torture: thousands of receive() calls cancelled at random
points while messages flow. Every message sent is received exactly once."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

import pytest

from chanlite.layer import SQLiteChannelLayer
from transports import TRANSPORTS, new_layer, transport_db_path

MESSAGES_PER_CHANNEL = 600
#: Receives each run cancels at least (the run goes on until it has).
CANCELLATIONS = 1000
#: A run that has not finished by then fails, saying where it stood.
TIME_LIMIT = 180


@pytest.fixture(params=TRANSPORTS)
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """On a database file, in test mode (an in-memory database), and on a
    dqlite cluster (marked ``cluster``)."""
    return transport_db_path(request, tmp_path, "chanlite-torture")


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


class _Run:
    """What the producer and the consumers of one torture run share."""

    def __init__(self, channels: list[str], min_rounds: int) -> None:
        self.min_rounds = min_rounds
        #: Rounds sent so far (one message to every channel per round).
        self.sent = 0
        #: Set once the producer has sent its last round.
        self.done = False
        self.received: collections.Counter[tuple[str, int]] = collections.Counter()
        self.stats: collections.Counter[str] = collections.Counter()
        self.total = dict.fromkeys(channels, 0)
        self.deadline = time.monotonic() + TIME_LIMIT

    def check_time(self, what: str) -> None:
        assert time.monotonic() < self.deadline, (
            f"{what} after {TIME_LIMIT} s: {self.sent} rounds sent, received {self.total}, "
            f"{dict(self.stats)}"
        )


async def _consume(layer: SQLiteChannelLayer, channel: str, run: _Run, rng: random.Random) -> None:
    """Receives every message sent to ``channel``, most receives cancelled at
    a random point, until the producer is done and all its rounds are in."""
    while not (run.done and run.total[channel] >= run.sent):
        run.check_time(f"{channel} stuck")
        if rng.random() < 0.85:
            message, cancelled = await _cancel_at_random(layer, channel, rng)
            run.stats["cancelled" if cancelled else "completed despite cancel"] += 1
        else:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.05)
                run.stats["completed"] += 1
            except asyncio.TimeoutError:  # not TimeoutError before Python 3.11
                message = None
                run.stats["timed out"] += 1
        if message is not None:
            run.received[(str(message["channel"]), int(message["i"]))] += 1  # type: ignore[call-overload]
            run.total[channel] += 1


async def _produce(
    layer: SQLiteChannelLayer, channels: list[str], rng: random.Random, run: _Run
) -> None:
    """Sends min_rounds rounds, then more while the consumers have cancelled
    fewer than CANCELLATIONS receives: how many receives a run cancels
    depends on timing, so the run goes on until the target is reached (in
    TIME_LIMIT), rather than hoping a fixed number of messages is enough.
    Past min_rounds it keeps at most a few rounds ahead of the slowest
    consumer, so the extra messages stay few."""
    while run.sent < run.min_rounds or run.stats["cancelled"] < CANCELLATIONS:
        run.check_time(f"only {run.stats['cancelled']}/{CANCELLATIONS} cancellations")
        if run.sent >= run.min_rounds and run.sent - min(run.total.values()) > 5:
            await asyncio.sleep(0.001)
            continue
        for channel in channels:
            await layer.send(channel, {"type": "torture", "channel": channel, "i": run.sent})
        run.sent += 1
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() * 0.002)
    run.done = True


@pytest.mark.parametrize(
    ("db_path", "loop_calls"),
    [
        pytest.param(transport, loop_calls, id=f"{transport}-{how}")
        for transport in ("file", "memory")
        for loop_calls, how in ((True, "on-loop"), (False, "in-pool"))
    ]
    # loop_calls means nothing to the cluster transport: one run.
    + [pytest.param("cluster", False, id="cluster", marks=pytest.mark.cluster)],
    indirect=["db_path"],
)
async def test_cancelled_receives_lose_nothing(db_path: str, loop_calls: bool) -> None:
    """With pops on the event loop's thread (the default) and all in the
    pool. Pops on the loop cannot be interrupted, so fewer receives are
    caught mid-way: that case sends more, for as many cancellations."""
    rng = random.Random(20240601)
    min_rounds = MESSAGES_PER_CHANNEL * (3 if loop_calls else 1)
    layer = new_layer(db_path, capacity=100_000, loop_calls=loop_calls)
    # Two process-specific channels (one receiver, shared buffers) and one
    # normal channel, received by this layer and by a second instance (as
    # another process would) at once.
    local = [await layer.new_channel(), await layer.new_channel()]
    other = new_layer(db_path, capacity=100_000, loop_calls=loop_calls)
    channels = [*local, "torture-normal"]
    run = _Run(channels, min_rounds)

    await asyncio.gather(
        _produce(layer, channels, rng, run),
        *(_consume(layer, channel, run, rng) for channel in local),
        _consume(layer, "torture-normal", run, rng),
        _consume(other, "torture-normal", run, rng),
    )
    print(run.sent, "rounds", dict(run.stats))
    assert run.sent >= min_rounds
    assert run.stats["cancelled"] >= CANCELLATIONS, run.stats
    expected = {(channel, i) for channel in channels for i in range(run.sent)}
    duplicates = {key: n for key, n in run.received.items() if n != 1}
    assert not duplicates, f"received more than once: {list(duplicates)[:10]}"
    assert set(run.received) == expected, f"lost: {sorted(expected - set(run.received))[:10]}"
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
    layer = new_layer(db_path)
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
