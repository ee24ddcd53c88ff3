#!/usr/bin/env python3
"""Where the paced tail comes from (issue 11, session 3): one producer process
and one consumer process, paced, every message's stages timestamped, and the
events around it (checkpoints of either process, its garbage collections,
loop calls that went to the pool) logged on the same clock.

    python3 bench/issue11/stages.py --python python -n 4000 --rate 200

Prints, for the messages past the end-to-end p99, which stage took the time
and what else happened meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import asyncio, gc, json, multiprocessing as mp, os, sys, time
sys.path.insert(0, PYDIR)
from chanlite import local
from chanlite.layer import SQLiteChannelLayer
now = time.monotonic_ns

def instrument(events):
    gc_start = {}
    def on_gc(phase, info):
        if phase == "start":
            gc_start["t"] = now()
        else:
            events.append(("gc", gc_start.get("t", now()), now(), info["generation"]))
    gc.callbacks.append(on_gc)
    orig = local._Checkpointer._checkpoint_if_due
    def ckpt(self):
        t0 = now(); p, r, f = self.passive, self.restarts, self.restart_failures
        orig(self)
        if self.passive != p or self.transport._request_autocheckpoint:
            events.append(("ckpt", t0, now(), self.restarts - r, self.restart_failures - f,
                           self.transport._request_autocheckpoint))
    local._Checkpointer._checkpoint_if_due = ckpt
    orig_pool = local.LocalTransport._call
    async def call(self, fn, *a, what=""):
        t0 = now()
        try:
            return await orig_pool(self, fn, *a, what=what)
        finally:
            events.append(("pool", t0, now(), what))
    local.LocalTransport._call = call
    orig_sub = local.LocalTransport._submit
    def submit(self, fn, *a):
        events.append(("submit", now(), now(), getattr(fn, "__name__", str(fn))))
        return orig_sub(self, fn, *a)
    local.LocalTransport._submit = submit

def consumer(path, n, ready, out):
    events = []
    instrument(events)
    orig_bell = local.LocalTransport._on_bell
    def on_bell(self, bell):
        t0 = now(); orig_bell(self, bell); events.append(("bell", t0, now()))
    local.LocalTransport._on_bell = on_bell
    orig_pop = local.LocalTransport._recv_batch_on
    def pop(self, conn, q, want):
        t0 = now(); rows = orig_pop(self, conn, q, want)
        events.append(("pop", t0, now(), len(rows))); return rows
    local.LocalTransport._recv_batch_on = pop
    async def main():
        layer = SQLiteChannelLayer(path=path, capacity=1_000_000)
        got = []
        ready.set()
        for _ in range(n):
            m = await layer.receive("tail")
            got.append((m["i"], now()))
        await layer.close()
        out.put((got, events))
    asyncio.run(main())

async def producer(path, n, rate, events):
    layer = SQLiteChannelLayer(path=path, capacity=1_000_000)
    body = "x" * 100
    sends = []
    start = time.monotonic()
    await layer.send("tail", {"type": "m", "i": -1, "b": body})
    for i in range(n):
        due = start + 0.2 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        fb = layer.transport.loop_fallbacks
        t = now()
        await layer.send("tail", {"type": "m", "i": i, "b": body})
        sends.append((t, now(), layer.transport.loop_fallbacks - fb))
    await layer.close()
    return sends

if __name__ == "__main__":
    mp.set_start_method("spawn")
    ready, out = mp.Event(), mp.Queue()
    c = mp.Process(target=consumer, args=(DB, N + 1, ready, out))
    c.start()
    ready.wait()
    pevents = []
    instrument(pevents)
    sends = asyncio.run(producer(DB, N, RATE, pevents))
    got, cevents = out.get()
    c.join()
    print(json.dumps({"sends": sends, "got": got, "pevents": pevents, "cevents": cevents}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default="python")
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--save")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = os.path.join(d, "t.db")
        code = (
            CHILD.replace("PYDIR", repr(os.path.abspath(a.python)))
            .replace("(DB,", f"({db!r},")
            .replace("N + 1", str(a.n + 1))
            .replace(" N, RATE", f" {a.n}, {a.rate!r}")
        )
        script = os.path.join(d, "child.py")
        with open(script, "w") as f:
            f.write(code)
        out = subprocess.run([sys.executable, script], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
    res = json.loads(out.stdout)
    if a.save:
        with open(a.save, "w") as f:
            json.dump(res, f)
    analyse(res)


def analyse(res: dict) -> None:
    sends = res["sends"]
    got = {i: t for i, t in res["got"] if i >= 0}
    e2e = sorted(((got[i] - s[0]) / 1e6, i) for i, s in enumerate(sends))
    n = len(e2e)
    q = lambda p: e2e[min(n - 1, int(p * n))][0]  # noqa: E731
    print(
        f"n={n} e2e p50 {q(0.5):.3f} p99 {q(0.99):.3f} p99.9 {q(0.999):.3f} max {e2e[-1][0]:.2f} ms"
    )
    st = sorted((s[1] - s[0]) / 1e6 for s in sends)
    print(f"send p50 {st[n // 2]:.3f} p99 {st[int(0.99 * n)]:.3f} p99.9 {st[int(0.999 * n)]:.3f}")
    ce, pe = res["cevents"], res["pevents"]
    # consumer pops, in order, give which pop delivered message i
    pops = [e for e in ce if e[0] == "pop" and e[3] > 0]
    popped_by: dict[int, list] = {}
    k = -1  # the warm-up message first
    for p in pops:
        for _ in range(p[3]):
            popped_by[k] = p
            k += 1
    bells = [e for e in ce if e[0] == "bell"]
    kinds: dict[str, int] = {}
    slow = [i for ms, i in e2e if ms >= q(0.99)]
    print(f"{len(slow)} messages at or past p99 ({q(0.99):.3f} ms):")
    for i in slow[:60]:
        t0, t1, fb = sends[i]
        p = popped_by.get(i)
        bell = next((b for b in reversed(bells) if t0 <= b[1] <= (p[1] if p else 1e30)), None)

        def ov(evs, lo, hi):
            return [e for e in evs if e[0] in ("gc", "ckpt", "pool") and e[2] >= lo and e[1] <= hi]

        near = [("P", *e) for e in ov(pe, t0, got[i])] + [("C", *e) for e in ov(ce, t0, got[i])]
        parts = {
            "send": (t1 - t0) / 1e6,  # the bell may be read before send() returns
            "to_bell": ((bell[1] - t0) / 1e6) if bell else None,
            "bell_to_pop": ((p[1] - bell[2]) / 1e6) if (bell and p) else None,
            "pop": ((p[2] - p[1]) / 1e6) if p else None,
            "pop_to_recv": ((got[i] - p[2]) / 1e6) if p else None,
        }
        e2e_ms = (got[i] - t0) / 1e6
        biggest = max((v, k) for k, v in parts.items() if v is not None)[1]
        tags = sorted({f"{e[0]}:{e[1]}" for e in near})
        kinds_key = biggest + ("+" + ",".join(tags) if tags else "")
        kinds[kinds_key] = kinds.get(kinds_key, 0) + 1
        fmt = " ".join(f"{k}={v:.2f}" if v is not None else f"{k}=?" for k, v in parts.items())
        extra = "; ".join(f"{e[0]} {e[1]} {(e[3] - e[2]) / 1e6:.2f}ms {e[4:]}" for e in near)
        print(f"  #{i} e2e {e2e_ms:.2f} fb={fb} {fmt} | {extra}")
    print("by biggest stage + overlapping events:")
    for k2, v in sorted(kinds.items(), key=lambda x: -x[1]):
        print(f"  {v:4d} {k2}")
    for who, evs in (("producer", pe), ("consumer", ce)):
        ck = [e for e in evs if e[0] == "ckpt"]
        g = [e for e in evs if e[0] == "gc"]
        pool = [e for e in evs if e[0] == "pool"]
        sub = [e for e in evs if e[0] == "submit"]
        restarts, failed = sum(e[3] for e in ck), sum(e[4] for e in ck)
        ck_max = max([(e[2] - e[1]) / 1e6 for e in ck] or [0])
        gc_max = max([(e[2] - e[1]) / 1e6 for e in g] or [0])
        gen2 = sum(1 for e in g if e[3] == 2)
        print(
            f"{who}: {len(ck)} checkpoints (restarts {restarts}, failed {failed}, "
            f"max {ck_max:.2f} ms), {len(g)} gcs (gen2 {gen2}, max {gc_max:.2f} ms), "
            f"{len(pool)} pool calls, submits {len(sub)}"
        )


if __name__ == "__main__":
    main()
