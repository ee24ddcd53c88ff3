"""One process of the soak (bench/soak/run.py starts four and SIGKILLs them).

    python3 bench/soak/worker.py DIR SLOT INCARNATION

Receives on K process-specific channels (each a member of the group
``soak.all``), on the ordinary channel ``soak.w<SLOT>`` and on ``soak.shared``
(which every process receives from: competing consumers), cancelling about a
third of its receive() calls with a timeout; sends a mix of direct sends to
the other processes' channels, sends to ``soak.w<n>`` and ``soak.shared``,
group sends, sends nobody receives (they expire), and group_add/discard churn.

Everything it does that the check needs is appended to DIR/logs/sSLOT-INC.log
with one write() per line, so that a SIGKILL loses at most the line being
formed (never one already written):

    S id channel sent_at              a send that returned (acknowledged)
    G id group delivered sent_at      a group_send that returned
    R id channel received_at latency  a message received
    J joined_at                       every channel is in soak.all

Its channel names go to DIR/peers/sSLOT-INC.json, where the others find them.
It stops sending when DIR/stop-sending exists, and exits cleanly (closing the
layer) when DIR/stop exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from chanlite.layer import ChannelFull, SQLiteChannelLayer

SETTINGS = json.loads(os.environ.get("SOAK_SETTINGS", "{}"))
K = int(SETTINGS.get("local_channels", 3))  # process-specific channels, all in soak.all
M = int(SETTINGS.get("normal_receivers", 2))  # receive() loops per ordinary channel
RATE = float(SETTINGS.get("rate", 1.0))
EXPIRY = float(SETTINGS.get("expiry", 10))
GROUP_EXPIRY = float(SETTINGS.get("group_expiry", 20))
SLOTS = int(SETTINGS.get("slots", 4))
# Operations per second of one process at RATE 1, by kind.
MIX = {"direct": 25, "own": 12, "shared": 12, "group": 3, "void": 3, "churn": 1}


class Log:
    """Append-only, one write() per line: what returned before a SIGKILL is on disk
    (in the page cache, which the kill of a process does not lose)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, *fields: object) -> None:
        os.write(self.fd, (" ".join(str(f) for f in fields) + "\n").encode())


class Worker:
    def __init__(self, workdir: Path, slot: int, incarnation: int) -> None:
        self.dir = workdir
        self.slot = slot
        self.incarnation = incarnation
        self.layer = SQLiteChannelLayer(
            path=str(workdir / "soak.sqlite3"),
            expiry=EXPIRY,
            group_expiry=GROUP_EXPIRY,
            capacity=int(SETTINGS.get("capacity", 2000)),
        )
        self.log = Log(workdir / "logs" / f"s{slot}-{incarnation}.log")
        self.seq = 0
        self.channels: list[str] = []
        self.peers: list[str] = []
        self.peers_read = 0.0
        self.full = 0

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.slot}.{self.incarnation}.{self.seq}"

    def message(self, msg_id: str) -> dict[str, Any]:
        return {"type": "soak", "id": msg_id, "t": time.time(), "pad": "x" * random.randint(0, 800)}

    def read_peers(self) -> None:
        """The newest incarnation's channels of every slot."""
        newest: dict[int, tuple[int, list[str]]] = {}
        for path in (self.dir / "peers").glob("s*.json"):
            with contextlib.suppress(OSError, ValueError):
                peer = json.loads(path.read_text())
                slot, inc = peer["slot"], peer["incarnation"]
                if slot not in newest or newest[slot][0] < inc:
                    newest[slot] = (inc, peer["channels"])
        self.peers = [ch for _, channels in newest.values() for ch in channels]
        self.peers_read = time.monotonic()

    async def start(self) -> None:
        self.channels = [await self.layer.new_channel("soak") for _ in range(K)]
        peer = self.dir / "peers" / f"s{self.slot}-{self.incarnation}.json"
        tmp = peer.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "slot": self.slot,
                    "incarnation": self.incarnation,
                    "pid": os.getpid(),
                    "channels": self.channels,
                }
            )
        )
        tmp.rename(peer)
        # At once, more calls than the layer has pool threads: every thread
        # opens its connection now, so that the descriptors' curve starts
        # where it stays, rather than stepping up when traffic first peaks.
        await asyncio.gather(*(self.layer.group_add("soak.all", ch) for ch in self.channels * 3))
        self.log.line("J", f"{time.time():.6f}")

    async def receive_loop(self, channel: str) -> None:
        while True:
            # A third of the receives are cancelled by their timeout: a
            # cancelled receive() must lose nothing.
            timeout = random.choice((0.02, 0.2, 5.0))
            try:
                message = await asyncio.wait_for(self.layer.receive(channel), timeout)
            except asyncio.TimeoutError:
                continue
            now = time.time()
            self.log.line("R", message["id"], channel, f"{now:.6f}", f"{now - message['t']:.6f}")

    async def send_one(self, kind: str) -> None:
        layer = self.layer
        if time.monotonic() - self.peers_read > 1.0:
            self.read_peers()
        msg_id = self.next_id()
        message = self.message(msg_id)
        try:
            if kind == "group":
                delivered = await layer.group_send("soak.all", message)
                self.log.line("G", msg_id, "soak.all", delivered, f"{message['t']:.6f}")
                return
            if kind == "churn":
                channel = random.choice(self.channels)
                if random.random() < 0.5:
                    await layer.group_add("soak.churn", channel)
                else:
                    await layer.group_discard("soak.churn", channel)
                delivered = await layer.group_send("soak.churn", message)
                self.log.line("G", msg_id, "soak.churn", delivered, f"{message['t']:.6f}")
                return
            if kind == "direct":
                channel = random.choice(self.peers or self.channels)
            elif kind == "own":
                channel = f"soak.w{random.randrange(SLOTS)}"
            elif kind == "shared":
                channel = "soak.shared"
            else:
                channel = "soak.void"  # nobody receives: every one expires
            await layer.send(channel, message)
            self.log.line("S", msg_id, channel, f"{message['t']:.6f}")
        except ChannelFull:
            self.full += 1  # not acknowledged: the check does not expect it

    async def send_loop(self) -> None:
        kinds = list(MIX)
        weights = [MIX[k] for k in kinds]
        per_second = sum(weights) * RATE
        next_at = time.monotonic()
        while not (self.dir / "stop-sending").exists():
            await self.send_one(random.choices(kinds, weights)[0])
            next_at += random.expovariate(per_second)
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    async def refresh_loop(self) -> None:
        """Keep the memberships alive, as a consumer that lives longer than
        group_expiry would (the dead ones expire)."""
        while True:
            await asyncio.sleep(GROUP_EXPIRY / 4)
            for channel in self.channels:
                await self.layer.group_add("soak.all", channel)

    async def run(self) -> None:
        await self.start()
        receivers = [asyncio.create_task(self.receive_loop(ch)) for ch in self.channels]
        for channel in (f"soak.w{self.slot}", "soak.shared"):
            receivers += [asyncio.create_task(self.receive_loop(channel)) for _ in range(M)]
        refresher = asyncio.create_task(self.refresh_loop())
        await self.send_loop()
        while not (self.dir / "stop").exists():  # noqa: ASYNC110 (a file, from another process)
            await asyncio.sleep(0.1)
        for task in [*receivers, refresher]:
            task.cancel()
        await asyncio.gather(*receivers, refresher, return_exceptions=True)
        await self.layer.close()
        self.log.line("E", f"{time.time():.6f}", f"full={self.full}")


def main() -> None:
    workdir, slot, incarnation = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    asyncio.run(Worker(workdir, slot, incarnation).run())


if __name__ == "__main__":
    main()
