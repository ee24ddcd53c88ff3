#!/usr/bin/env python3
"""A/B harness for issue 11: send() time and end-to-end latency through the
layer, one producer process and one consumer process on one database file.

    python3 bench/issue11/tail.py --python A_DIR --python B_DIR --rounds 5

Runs A, B, A, B ... (interleaved, so load drifting on a shared machine hits
both alike) and prints, per tree, the median over rounds of each percentile
with its min-max. ``--rate 0`` sends as fast as the consumer keeps up
(unbounded), else paced at --rate messages per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import asyncio, json, multiprocessing as mp, os, sys, time
sys.path.insert(0, PYDIR)
from chanlite.layer import SQLiteChannelLayer

def consumer(path, n, ready, out):
    async def main():
        layer = SQLiteChannelLayer(path=path, capacity=1_000_000)
        lat = []
        ready.set()
        for _ in range(n):
            m = await layer.receive("tail")
            lat.append(time.monotonic_ns() - m["t"])
        await layer.close()
        out.put(lat)
    asyncio.run(main())

async def producer(path, n, rate):
    layer = SQLiteChannelLayer(path=path, capacity=1_000_000)
    body = "x" * SIZE
    took = []
    start = time.monotonic()
    async def one(k):
        for i in range(k, n, PRODUCERS):
            if rate:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            t = time.monotonic_ns()
            await layer.send("tail", {"type": "m", "t": t, "b": body})
            took.append(time.monotonic_ns() - t)
    await asyncio.gather(*(one(k) for k in range(PRODUCERS)))
    elapsed = time.monotonic() - start
    await layer.close()
    return took, elapsed

if __name__ == "__main__":
    mp.set_start_method("spawn")
    ready, out = mp.Event(), mp.Queue()
    c = mp.Process(target=consumer, args=(DB, N, ready, out))
    c.start()
    ready.wait()
    took, elapsed = asyncio.run(producer(DB, N, RATE))
    lat = out.get()
    c.join()
    print(json.dumps({"send": took, "e2e": lat, "elapsed": elapsed}))
"""


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e6


def run_once(pydir: str, n: int, rate: float, size: int, producers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        db = os.path.join(d, "tail.db")
        code = CHILD.replace("PYDIR", repr(pydir)).replace("DB", repr(db))
        code = (
            code.replace("PRODUCERS", str(producers))
            .replace("SIZE", str(size))
            .replace("RATE", repr(rate))
            .replace(" N,", f" {n},")
        )
        code = code.replace("(DB, N,", f"({db!r}, {n},")
        script = os.path.join(d, "child.py")
        with open(script, "w") as f:
            f.write(code)
        res = json.loads(
            subprocess.run(
                [sys.executable, script], check=True, capture_output=True, text=True
            ).stdout
        )
    row = {"msg/s": n / res["elapsed"]}
    for k in ("send", "e2e"):
        for q in (0.5, 0.99, 0.999):
            row[f"{k} p{q * 100:g}"] = pct(res[k], q)
        row[f"{k} max"] = max(res[k]) / 1e6
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--producers", type=int, default=1, help="coroutines sending at once")
    a = ap.parse_args()
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in a.python}
    for _ in range(a.rounds):
        for p in a.python:
            rows[p].append(run_once(p, a.n, a.rate, a.size, a.producers))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    rate = a.rate or "unpaced"
    print(f"n={a.n} rate={rate} size={a.size} producers={a.producers} rounds={a.rounds}", end=" ")
    print(f"(interleaved) load average at the end {load}")
    keys = list(rows[a.python[0]][0])
    print("| figure | " + " | ".join(a.python) + " |")
    print("|---|" + "---:|" * len(a.python))
    for k in keys:
        cells = []
        for p in a.python:
            v = [r[k] for r in rows[p]]
            cells.append(f"{statistics.median(v):.3g} ({min(v):.3g}-{max(v):.3g})")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
