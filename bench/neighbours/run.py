"""Noisy neighbours: what a flood on one channel does to the other channels of
the same database, or of the same process.

    python3 bench/neighbours/run.py                 # ~3 min: 3 runs of each case, 10 s each
    python3 bench/neighbours/run.py --runs 1 --seconds 5

The quiet traffic, the same in every case: a process sends to 4 ordinary
channels, 25 messages a second each, and another process receives them; each
message carries its send time, so the receiver knows its latency, and its
number, so the receiver checks that none is lost, doubled or out of order.

Cases:

* ``baseline``: the quiet traffic alone.
* ``full-flood``: a producer process, 4 tasks sending to one channel as fast
  as they can; nobody receives it, so it is at capacity (100) and every send
  but the first 100 fails with ChannelFull.
* ``slow-consumer-flood``: the same, with a consumer that takes 20 messages
  a second: the channel stays at capacity, some sends succeed.
* ``crowd-idle``: the quiet receiver's process also holds 10,000
  process-specific channels, each with a receive() waiting, all in one group,
  and receives on one more of them (``local``: in the same ``prefix!`` queue
  as the crowd) beside the 4 ordinary channels.
* ``crowd-flood``: the same, while a producer process group_sends to the
  crowd's group as fast as it can (each a message to each of the 10,000).

For each case: the quiet messages' latency (send to receive: p50, p99, max),
the quiet sends' own duration, and the flood's rate. Writes
bench/results/neighbours.md and neighbours.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MP = mp.get_context("spawn")
QUIET = [f"quiet.{i}" for i in range(4)]
QUIET_RATE = 25.0  # per channel, per second
CROWD = 10_000
CASES = ["baseline", "full-flood", "slow-consumer-flood", "crowd-idle", "crowd-flood"]


def make_layer(db: str) -> Any:
    from chanlite.layer import SQLiteChannelLayer

    return SQLiteChannelLayer(path=db, capacity=100, expiry=60)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# ---- in the worker processes ----


def quiet_sender(db: str, go: Any, stop: Any, local: Any, out: Any) -> None:
    """Send to the quiet channels (and to the crowd's local neighbour, once
    its name is known) at QUIET_RATE each until stop; report the send times."""
    layer = make_layer(db)

    async def main() -> None:
        go.wait()
        channels = list(QUIET)
        with contextlib.suppress(Exception):
            name = local.get(timeout=5)
            if name:
                channels.append(name)
        durations: list[float] = []
        sent = dict.fromkeys(channels, 0)
        failed = 0
        interval = 1 / QUIET_RATE
        next_at = time.monotonic()
        while not stop.is_set():
            for channel in channels:
                started = time.monotonic()
                try:
                    await layer.send(channel, {"t": time.time(), "i": sent[channel]})
                    sent[channel] += 1
                except Exception:
                    failed += 1
                durations.append(time.monotonic() - started)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        out.put({"role": "sender", "sent": sent, "failed": failed, "durations": durations})
        await layer.close()

    asyncio.run(main())


def quiet_receiver(db: str, crowd: bool, ready: Any, done: Any, local: Any, out: Any) -> None:
    """Receive the quiet channels (and with crowd, hold 10,000 hungry
    process-specific channels in one group and receive one more local
    channel); report latencies, and what was lost or out of order."""
    layer = make_layer(db)

    async def main() -> None:
        waiting: list[asyncio.Task[Any]] = []
        channels = list(QUIET)
        if crowd:
            for _ in range(CROWD):
                name = await layer.new_channel()
                await layer.group_add("crowd", name)
                waiting.append(asyncio.create_task(layer.receive(name)))
            neighbour = await layer.new_channel()
            channels.append(neighbour)
            local.put(neighbour)
        else:
            local.put("")
        latencies: dict[str, list[float]] = {ch: [] for ch in channels}
        disorder = 0

        async def receive_loop(channel: str) -> None:
            nonlocal disorder
            expected = 0
            while True:
                message = await layer.receive(channel)
                latencies[channel].append(time.time() - message["t"])
                if message["i"] != expected:
                    disorder += 1
                expected = message["i"] + 1

        loops = [asyncio.create_task(receive_loop(ch)) for ch in channels]
        await asyncio.sleep(0.5)
        ready.set()
        while not done.is_set():  # noqa: ASYNC110 (another process's event)
            await asyncio.sleep(0.05)
        for task in loops + waiting:
            task.cancel()
        await asyncio.gather(*loops, *waiting, return_exceptions=True)
        crowd_got = sum(1 for t in waiting if not t.cancelled() and t.exception() is None)
        out.put(
            {
                "role": "receiver",
                "latencies": latencies,
                "disorder": disorder,
                "crowd_received": crowd_got,
            }
        )
        await layer.close()

    asyncio.run(main())


def flooder(db: str, mode: str, go: Any, stop: Any, out: Any) -> None:
    """Send (or group_send) as fast as 4 tasks can until stop."""
    from chanlite.layer import ChannelFull

    layer = make_layer(db)

    async def main() -> None:
        counts = {"ok": 0, "full": 0}
        go.wait()
        started = time.monotonic()

        async def flood() -> None:
            while not stop.is_set():
                try:
                    if mode == "group":
                        await layer.group_send("crowd", {"flood": 1})
                    else:
                        await layer.send("noisy", {"flood": 1, "pad": "x" * 200})
                    counts["ok"] += 1
                except ChannelFull:
                    counts["full"] += 1
                await asyncio.sleep(0)

        await asyncio.gather(*(flood() for _ in range(4)))
        seconds = time.monotonic() - started
        out.put({"role": "flooder", **counts, "seconds": seconds})
        await layer.close()

    asyncio.run(main())


def slow_consumer(db: str, stop: Any) -> None:
    layer = make_layer(db)

    async def main() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(layer.receive("noisy"), 1.0)
            await asyncio.sleep(0.05)
        await layer.close()

    asyncio.run(main())


# ---- the harness ----


def run_case(case: str, seconds: float, workdir: Path) -> dict[str, Any]:
    db = str(workdir / f"{case}-{time.monotonic_ns()}.sqlite3")
    go, stop, ready, done = MP.Event(), MP.Event(), MP.Event(), MP.Event()
    out, local = MP.Queue(), MP.Queue()
    crowd = case.startswith("crowd")
    procs = [MP.Process(target=quiet_receiver, args=(db, crowd, ready, done, local, out))]
    procs[0].start()
    assert ready.wait(120), f"{case}: the receiver did not start"
    procs.append(MP.Process(target=quiet_sender, args=(db, go, stop, local, out)))
    if case in ("full-flood", "slow-consumer-flood", "crowd-flood"):
        mode = "group" if case == "crowd-flood" else "send"
        procs.append(MP.Process(target=flooder, args=(db, mode, go, stop, out)))
    if case == "slow-consumer-flood":
        procs.append(MP.Process(target=slow_consumer, args=(db, stop)))
    for proc in procs[1:]:
        proc.start()
    time.sleep(1.0)  # every process has imported and opened its layer
    go.set()
    time.sleep(seconds)
    stop.set()
    results: dict[str, Any] = {}
    reporting = 2 if "flood" in case else 1  # the sender, and the flooder if any
    while len(results) < reporting:
        item = out.get(timeout=120)
        results[item["role"]] = item
    time.sleep(2.0)  # the last quiet messages arrive
    done.set()
    item = out.get(timeout=120)
    results[item["role"]] = item
    for proc in procs:
        proc.join(30)
    sender, receiver = results["sender"], results["receiver"]
    all_latencies = [x for lats in receiver["latencies"].values() for x in lats]
    local_latencies = [
        x for ch, lats in receiver["latencies"].items() if ch not in QUIET for x in lats
    ]
    row = {
        "case": case,
        "quiet_sent": sum(sender["sent"].values()),
        "quiet_received": len(all_latencies),
        "quiet_failed_sends": sender["failed"],
        "quiet_out_of_order": receiver["disorder"],
        "latency_p50_ms": percentile(all_latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(all_latencies, 0.99) * 1000,
        "latency_max_ms": max(all_latencies, default=float("nan")) * 1000,
        "local_p99_ms": percentile(local_latencies, 0.99) * 1000,
        "send_p50_ms": percentile(sender["durations"], 0.5) * 1000,
        "send_p99_ms": percentile(sender["durations"], 0.99) * 1000,
    }
    if "flooder" in results:
        flood = results["flooder"]
        row["flood_ops_per_s"] = (flood["ok"] + flood["full"]) / flood["seconds"]
        row["flood_full_per_s"] = flood["full"] / flood["seconds"]
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Noisy neighbours",
        "",
        "`python3 bench/neighbours/run.py"
        + (f" --runs {args.runs} --seconds {args.seconds}" if args.runs != 3 else "")
        + "` (see its docstring for the cases). Quiet traffic: 4 ordinary channels,"
        " 25 messages/s each, one sender process, one receiver process; in the crowd cases the"
        " receiver's process also holds 10,000 process-specific channels with a receive()"
        " waiting, and receives one more of its own process-specific channels (`local p99`)."
        " A flood call is a send (refused: the channel is full) or, in crowd-flood, a"
        " group_send to the 10,000.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other work"
        f" (load average {os.getloadavg()[0]:.1f} at the end); Python"
        f" {platform.python_version()}. Each figure is the median over {args.runs} run(s)"
        " of that run's percentile.",
        "",
        "| case | quiet p50 ms | quiet p99 ms | quiet max ms | local p99 ms | send p99 ms"
        " | lost | out of order | flood calls/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        runs = [r for r in rows if r["case"] == case]
        if not runs:
            continue

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            values = [r[key] for r in runs if key in r and r[key] == r[key]]
            return statistics.median(values) if values else float("nan")

        def show(key: str, digits: int = 1) -> str:
            value = med(key)
            return "-" if value != value else f"{value:.{digits}f}"  # NaN: not in this case

        lost = sum(r["quiet_sent"] - r["quiet_received"] for r in runs)
        lines.append(
            f"| {case} | {show('latency_p50_ms')} | {show('latency_p99_ms')}"
            f" | {show('latency_max_ms', 0)} | {show('local_p99_ms')}"
            f" | {show('send_p99_ms')} | {lost}"
            f" | {sum(r['quiet_out_of_order'] for r in runs)} | {show('flood_ops_per_s', 0)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="chanlite-neighbours-") as tmp:
        for run in range(args.runs):
            for case in args.cases.split(","):
                row = run_case(case, args.seconds, Path(tmp))
                row["run"] = run
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "neighbours.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = report(rows, args)
    (out / "neighbours.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
