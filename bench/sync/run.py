"""Sync callers: group_send from 8 threads of one process, as WSGI views, signals and
Celery tasks call a channel layer.

    python3 bench/sync/run.py                 # ~2.5 min: 3 runs of every case, 5 s each
    python3 bench/sync/run.py --runs 1 --seconds 2 --threads 8

Cases (each a ``CHANNEL_LAYERS["default"]`` built as Channels builds it, see
bench/peers/layers.py):

* chanlite, ``async_to_sync(layer.group_send)`` (an event loop per call, the layer's pool)
* chanlite, ``chanlite.sync.group_send`` (one SQL call on the calling thread)
* channels_redis ``RedisChannelLayer``, ``async_to_sync(layer.group_send)``

For each run of each case: a consumer process joins a group with one ``new_channel()`` and
receives; a sender process starts T threads that call group_send to the group as fast as they
can for S seconds. The rate is every thread's sends over the time from the first send to the
last one returning. The consumer must then have received every message once (checked by id).
Cases are interleaved run by run, so that a change in machine load hits all of them alike; each
figure is the median of the runs with the min-max spread.

Writes bench/results/sync.md and sync.json. Needs redis-server and channels_redis
(bench/peers/install.sh installs both; run.py calls it when they are missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "peers"))

import layers  # noqa: E402
import servers  # noqa: E402

MP = mp.get_context("spawn")
GROUP = "bench-sync"
PAYLOAD = b"x" * 100
#: Every layer's capacity: above what a run sends, so that a consumer falling behind (two cores
#: shared by the senders and it) makes no group_send skip its member. The rate is the senders'.
CAPACITY = 100_000


@dataclass(frozen=True)
class Case:
    layer: str  # a bench/peers/layers.py factory name
    call: str  # "async_to_sync" or "chanlite.sync"

    @property
    def label(self) -> str:
        if self.call == "async_to_sync":
            return f"{self.layer}, async_to_sync(layer.group_send)"
        return f"{self.layer}, chanlite.sync.group_send"


CASES = [
    Case("chanlite", "async_to_sync"),
    Case("chanlite", "chanlite.sync"),
    Case("channels_redis", "async_to_sync"),
]


@dataclass
class Sample:
    case: str
    threads: int
    run: int
    sent: int
    skipped: int
    seconds: float
    rate: float
    received: int
    distinct: int
    error: str = ""


# ---- in the worker processes ----


def consumer(spec: layers.LayerSpec, ready: Any, expected: Any, report: Any) -> None:
    """Join the group with a new channel and receive until `expected` (set once the senders
    are done) messages have come, or none came for 20 s after that; report (received,
    distinct ids). No receive is cancelled while messages may still come (that may lose one in
    some layers): a task receives, and this waits for it."""
    layer = layers.open_layer(spec)

    async def main() -> None:
        await layer.flush()
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        seen: set[tuple[int, int]] = set()
        received = 0

        async def drain() -> None:
            nonlocal received
            while not (0 <= expected.value <= received):
                message = await layer.receive(channel)
                received += 1
                seen.add((message["t"], message["i"]))

        task = asyncio.create_task(drain())
        ready.set()
        last, quiet_since = -1, time.monotonic()
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if 0 <= expected.value <= received:
                break  # all in: the receive now waiting has nothing to take
            if received != last or expected.value < 0:
                last, quiet_since = received, time.monotonic()
            elif time.monotonic() - quiet_since > 20:
                break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # a layer may fail a cancelled receive its own way
        report.put((received, len(seen)))
        await layer.flush()

    asyncio.run(main())


def sender(spec: layers.LayerSpec, call: str, threads: int, seconds: float, report: Any) -> None:
    """threads threads calling group_send for `seconds`; report (sent, elapsed)."""
    layer = layers.open_layer(spec)
    if call == "chanlite.sync":
        import chanlite.sync

        def group_send(message: dict[str, Any]) -> Any:
            return chanlite.sync.group_send(GROUP, message, layer=layer)
    else:
        from asgiref.sync import async_to_sync

        def group_send(message: dict[str, Any]) -> Any:
            return async_to_sync(layer.group_send)(GROUP, message)

    group_send({"type": "warm", "t": -1, "i": -1})  # connections, tables: not measured
    barrier = threading.Barrier(threads)
    counts = [0] * threads
    skipped = [0] * threads  # group_send said it delivered to nobody (the member was full)
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * threads
    errors: list[str] = []

    def work(t: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        stop = started + seconds
        i = 0
        try:
            while time.perf_counter() < stop:
                if group_send({"type": "bench", "t": t, "i": i, "payload": PAYLOAD}) == 0:
                    skipped[t] += 1  # chanlite returns the count, channels_redis None
                i += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        counts[t] = i
        spans[t] = (started, time.perf_counter())

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    report.put((sum(counts), sum(skipped), elapsed, "; ".join(sorted(set(errors)))))


# ---- in the harness ----


def one_sample(
    spec: layers.LayerSpec, case: Case, threads: int, seconds: float, run: int
) -> Sample:
    ready = MP.Event()
    expected = MP.Value("q", -1)
    results: Any = MP.Queue()
    sent_q: Any = MP.Queue()
    cons = MP.Process(target=consumer, args=(spec, ready, expected, results))
    cons.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the consumer did not start in 60 s")
        send = MP.Process(target=sender, args=(spec, case.call, threads, seconds, sent_q))
        send.start()
        sent, skipped, elapsed, error = sent_q.get(timeout=seconds + 120)
        send.join(30)
        expected.value = sent + 1  # and the warm-up message
        received, distinct = results.get(timeout=120)
        cons.join(30)
    finally:
        for proc in (cons,):
            if proc.is_alive():
                proc.kill()
    return Sample(
        case=case.label,
        threads=threads,
        run=run,
        sent=sent,
        seconds=round(elapsed, 3),
        rate=round(sent / elapsed, 1) if elapsed else 0.0,
        skipped=skipped,
        received=received - 1,
        distinct=distinct - 1,
        error=error,
    )


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib import metadata

    found = {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis-server": servers.redis_version(),
    }
    for dist in ("channels", "channels-redis", "redis", "asgiref", "Django"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(s.case, s.threads) for s in samples}, key=lambda k: (k[1], k[0]))
    order = [c.label for c in CASES]
    keys.sort(key=lambda k: (k[1], order.index(k[0]) if k[0] in order else 99))
    for case, threads in keys:
        mine = [s for s in samples if s.case == case and s.threads == threads and not s.error]
        failed = [s.error for s in samples if s.case == case and s.threads == threads and s.error]
        rates = [s.rate for s in mine]
        rows.append(
            {
                "case": case,
                "threads": threads,
                "median": statistics.median(rates) if rates else None,
                "min": min(rates) if rates else None,
                "max": max(rates) if rates else None,
                "sent": sum(s.sent for s in mine),
                "skipped": sum(s.skipped for s in mine),
                "lost": sum(s.sent - s.skipped - s.distinct for s in mine),
                "duplicated": sum(s.received - s.distinct for s in mine),
                "errors": failed,
            }
        )
    return rows


def write_report(
    out: Path, rows: list[dict[str, Any]], samples: list[Sample], meta: dict[str, Any]
) -> None:
    (out / "sync.json").write_text(
        json.dumps(
            {"meta": meta, "summary": rows, "samples": [asdict(s) for s in samples]}, indent=1
        )
        + "\n"
    )
    lines = [
        "# Sync callers: group_send from threads",
        "",
        f"`python3 bench/sync/run.py {meta['args']}` on {meta['date']}, {meta['wall']:.0f} s.",
        "",
        "| case | threads | sends/s (median) | min–max | sent | skipped | lost | duplicated |",  # noqa: RUF001
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["median"] is None:
            lines.append(f"| {r['case']} | {r['threads']} | n/a | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['median']:,.0f} | "
            f"{r['min']:,.0f}–{r['max']:,.0f} | {r['sent']:,} | "  # noqa: RUF001
            f"{r['skipped']} | {r['lost']} | {r['duplicated']} |"
        )
    by = {(r["case"], r["threads"]): r["median"] for r in rows}
    ratios = []
    for threads in sorted({r["threads"] for r in rows}):
        redis = by.get((CASES[2].label, threads))
        for case in CASES[:2]:
            mine = by.get((case.label, threads))
            if mine and redis:
                ratios.append(
                    f"- {threads} thread{'s' if threads > 1 else ''}: {case.label} is "
                    f"{mine / redis:.1f}× channels_redis's async_to_sync"  # noqa: RUF001
                )
    errors = [f"- {r['case']}, {r['threads']} threads: {e}" for r in rows for e in r["errors"]]
    lines += ["", *ratios]
    if errors:
        lines += ["", "Failed runs:", *errors]
    lines += [
        "",
        "## Method",
        "",
        f"Each case, {meta['runs']} runs interleaved case by case, {meta['seconds']} s each: a "
        "consumer process joins the group with one `new_channel()` and receives; a sender process "
        "(spawned fresh per run) starts the threads, which call group_send with a "
        "100-byte payload as fast as they can, all let go at once by a barrier. One call "
        "before the threads start opens the connections and is not counted. The rate is all "
        "threads' sends over the time from the first send to the last one returning. "
        "`skipped`: sends that group_send said reached nobody (the member was full; chanlite "
        "returns the count, channels_redis returns None so none are counted); `lost`: other "
        "messages the consumer never received (each carries its thread and sequence number); "
        "`duplicated`: received twice. Layers are built from `CHANNEL_LAYERS` as in "
        f"bench/peers, with capacity {meta['capacity']:,} (chanlite on a database file "
        "in a temporary directory; redis-server on 127.0.0.1 with `--save '' --appendonly "
        "no`). `async_to_sync` is asgiref's: from a thread with no event loop, each call starts "
        "a thread and runs the coroutine there in a new event loop (`asyncio.run`).",
        "",
        f"Load average before {meta['load_before']}, after {meta['load_after']}, on "
        f"{os.cpu_count()} cores: where it is above the core count, other work shared the "
        "machine, and the figures are low in absolute terms; the cases are interleaved run by "
        "run, so their ratios still hold.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in meta["machine"].items()],
        "",
    ]
    (out / "sync.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--capacity", type=int, default=CAPACITY)
    parser.add_argument("--no-install", action="store_true", help="never call install.sh")
    parser.add_argument(
        "--from-json", type=Path, help="only rewrite sync.md from this sync.json's samples"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        samples = [Sample(**s) for s in data["samples"]]
        write_report(args.out, summarize(samples), samples, data["meta"])
        return 0
    thread_counts = [int(t) for t in args.threads.split(",")]

    if not args.no_install and (
        servers.find_redis() is None
        or shutil.which("redis-server") is None
        or not _has("channels_redis")
    ):
        subprocess.run(["bash", str(REPO / "bench" / "peers" / "install.sh")], check=True)

    tmp = Path(tempfile.mkdtemp(prefix="chanlite-sync-"))
    started = time.monotonic()
    load_before = loadavg()
    redis = None
    samples: list[Sample] = []
    try:
        ctx = layers.FactoryContext(repo=REPO, tmp=tmp)
        print("building chanlite into build-peers/", flush=True)
        ctx.chanlite_so = layers.build_chanlite(REPO, tmp / "meson.log")
        os.environ["CHANLITE_EXTENSION"] = str(ctx.chanlite_so)
        redis, ctx.redis_url = servers.start_redis(tmp)
        specs = {
            name: dataclasses.replace(spec, config={**spec.config, "capacity": args.capacity})
            for name, spec in (
                ("chanlite", layers.chanlite(ctx)),
                ("channels_redis", layers.channels_redis(ctx)),
            )
        }
        for run in range(1, args.runs + 1):
            for threads in thread_counts:
                for case in CASES:
                    try:
                        sample = one_sample(specs[case.layer], case, threads, args.seconds, run)
                    except (RuntimeError, queue.Empty, OSError) as exc:
                        sample = Sample(case.label, threads, run, 0, 0, 0, 0, 0, 0, repr(exc))
                    samples.append(sample)
                    print(
                        f"run {run} {threads:>2} threads  {case.label:<50} "
                        f"{sample.rate:>8,.0f}/s  sent {sample.sent} received {sample.received}"
                        f"{'  ' + sample.error if sample.error else ''}",
                        flush=True,
                    )
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = summarize(samples)
    meta = {
        "args": " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "wall": time.monotonic() - started,
        "runs": args.runs,
        "seconds": args.seconds,
        "capacity": args.capacity,
        "load_before": load_before,
        "load_after": loadavg(),
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, rows, samples, meta)
    print((args.out / "sync.md").read_text())
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
