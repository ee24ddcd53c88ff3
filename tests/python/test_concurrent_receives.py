"""Several receive() calls at once on one ordinary channel of one layer, cut
short by timeouts, as a process's workers or consumers do: every message is
received once. bench/soak found that a receive() woken and then cancelled
could leave a popped message in a queue the layer had already forgotten
(about one in a thousand, here); this runs enough of them to catch that."""

from __future__ import annotations

import asyncio
import random

from chanlite.layer import SQLiteChannelLayer

MESSAGES = 3000
RECEIVERS = 2
WAIT = 30.0  # for the last messages: only a lost one makes it wait this long


async def test_concurrent_cancelled_receives_of_one_channel_lose_nothing(db_path: str) -> None:
    rng = random.Random(13)
    layer = SQLiteChannelLayer(path=db_path, capacity=MESSAGES)
    sender = SQLiteChannelLayer(path=db_path, capacity=MESSAGES)
    got: list[int] = []
    all_in = asyncio.Event()

    async def receive_cut_short() -> None:
        while True:
            try:
                message = await asyncio.wait_for(
                    layer.receive("race"), rng.choice((0.001, 0.005, 0.02))
                )
            except asyncio.TimeoutError:
                continue
            got.append(message["i"])
            if len(got) >= MESSAGES:
                all_in.set()

    receivers = [asyncio.create_task(receive_cut_short()) for _ in range(RECEIVERS)]
    try:
        for i in range(MESSAGES):
            await sender.send("race", {"i": i})
            if i % 3 == 0:
                await asyncio.sleep(rng.choice((0, 0.001)))
        await asyncio.wait_for(all_in.wait(), WAIT)
    except asyncio.TimeoutError:
        pass  # the assertions below say what is missing
    finally:
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        await layer.close()
        await sender.close()
    assert sorted(got) == list(range(MESSAGES)), (
        f"lost {sorted(set(range(MESSAGES)) - set(got))[:10]}, "
        f"{len(got) - len(set(got))} received twice"
    )
