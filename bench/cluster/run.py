"""The layer on a 3-node dqlite cluster beside chanlite on a file and channels_redis.

    .venv/bin/python bench/cluster/run.py [--seconds 5] [--out bench/results]

Needs Python >= 3.13 with the package's dependencies, dqlite-client and
channels-redis, ``build/node/chanlite-node`` and ``build/chanlite.so`` (meson
compile -C build), and ``redis-server`` (channels_redis is skipped without
it). Each workload runs each layer in fresh processes (spawn):

* throughput: a producer sends 100 B messages to a consumer's
  ``new_channel()`` for ``--seconds``, at most 100 sent but not received;
  the rate is the consumer's.
* paced latency: 200 msg/s for ``--seconds``, send -> receive p50 / p99
  (one clock: CLOCK_MONOTONIC, shared by the processes).
* idle: 25 receivers blocked on empty channels for 10 s: the client
  process's CPU (getrusage) and the servers' (the three nodes, or
  redis-server), from /proc.
* failover (cluster only): paced sends at 200 msg/s; the leader is
  SIGKILLed; the longest gap between two received messages, and how long
  after the kill the first send was acknowledged.

Writes ``cluster.md`` and ``cluster.json`` into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests" / "cluster")]
os.environ.setdefault("CHANLITE_EXTENSION", str(ROOT / "build" / "chanlite.so"))

PAYLOAD = b"x" * 100
IN_FLIGHT = 100
PACED_RATE = 200
#: A second, slower pace: a sender that awaits each send cannot keep up
#: 200/s on the cluster (two Raft commits per message, one each way).
SLOW_RATE = 50


def make_layer(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[spec["url"]], capacity=1000)
    from chanlite.layer import SQLiteChannelLayer

    if spec["kind"] == "cluster":
        return SQLiteChannelLayer(cluster=spec["addresses"], capacity=1000, lock_timeout=60)
    return SQLiteChannelLayer(path=spec["path"], capacity=1000)


async def close(layer: Any) -> None:
    if hasattr(layer, "close"):  # channels_redis's layer has none
        await layer.close()


# ---- worker processes ----


def consumer(spec: dict[str, Any], channel_q: Any, result_q: Any, count: Any, stop: Any) -> None:
    async def main() -> None:
        layer = make_layer(spec)
        channel = await layer.new_channel()
        channel_q.put(channel)
        latencies: list[float] = []
        first = last = 0.0
        while not stop.is_set() or count.value < 0:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 1.0)
            except TimeoutError:
                continue
            if message.get("end"):
                break
            now = time.monotonic()
            latencies.append(now - message["t"])
            first = first or now
            last = now
            with count.get_lock():
                count.value += 1
        result_q.put({"latencies": latencies, "first": first, "last": last})
        await close(layer)

    asyncio.run(main())


def producer(
    spec: dict[str, Any], channel: str, count: Any, acked: Any, seconds: float, rate: float
) -> None:
    async def main() -> None:
        layer = make_layer(spec)
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if rate:
                due = start + sent / rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
            elif sent - count.value >= IN_FLIGHT:
                await asyncio.sleep(0.0005)
                continue
            try:
                await layer.send(channel, {"type": "b", "payload": PAYLOAD, "t": time.monotonic()})
            except Exception as e:  # failover: counted as a gap
                print("send failed:", e, file=sys.stderr)
                continue
            sent += 1
            acked.value = sent
        await layer.send(channel, {"type": "b", "end": True})
        await close(layer)

    asyncio.run(main())


def idle_receivers(spec: dict[str, Any], seconds: float, result_q: Any) -> None:
    import resource

    async def main() -> None:
        layer = make_layer(spec)
        tasks = [asyncio.create_task(layer.receive(f"idle-{os.getpid()}-{i}")) for i in range(25)]
        await asyncio.sleep(2)  # armed and waiting
        before = resource.getrusage(resource.RUSAGE_SELF)
        result_q.put("waiting")
        await asyncio.sleep(seconds)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result_q.put(cpu)
        await close(layer)

    asyncio.run(main())


# ---- the harness ----


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def stream(spec: dict[str, Any], seconds: float, rate: float, kill: Any = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    channel_q, result_q = ctx.Queue(), ctx.Queue()
    count, acked, stop = ctx.Value("l", 0), ctx.Value("l", 0), ctx.Event()
    cons = ctx.Process(target=consumer, args=(spec, channel_q, result_q, count, stop))
    cons.start()
    channel = channel_q.get(timeout=60)
    prod = ctx.Process(target=producer, args=(spec, channel, count, acked, seconds, rate))
    prod.start()
    killed_at = None
    if kill is not None:
        time.sleep(seconds / 3)
        killed_at = time.monotonic()
        kill()
    prod.join(seconds + 120)
    result = result_q.get(timeout=120)
    stop.set()
    cons.join(30)
    result["killed_at"] = killed_at
    result["acked"] = acked.value
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def idle(spec: dict[str, Any], server_pids: list[int], seconds: float = 10.0) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    result_q = ctx.Queue()
    proc = ctx.Process(target=idle_receivers, args=(spec, seconds, result_q))
    proc.start()
    assert result_q.get(timeout=60) == "waiting"
    server_before = cpu_of(server_pids)
    client = result_q.get(timeout=seconds + 60)
    server = cpu_of(server_pids) - server_before
    proc.join(30)
    return {"client_cpu_pct": 100 * client / seconds, "server_cpu_pct": 100 * server / seconds}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    from nodes import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="chanlite-bench-cluster-"))
    results: dict[str, dict[str, Any]] = {}
    redis = None
    (tmp / "cluster").mkdir()
    cluster = Cluster(workdir=tmp / "cluster")
    try:
        cluster.start()
        specs: dict[str, tuple[dict[str, Any], list[int]]] = {
            "chanlite cluster (3 dqlite nodes)": (
                {"kind": "cluster", "addresses": cluster.addresses},
                [n.process.pid for n in cluster.nodes if n.process],
            ),
            "chanlite file": ({"kind": "file", "path": str(tmp / "layer.sqlite3")}, []),
        }
        if shutil.which("redis-server"):
            port = free_port()
            redis = subprocess.Popen(
                ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            specs["channels_redis"] = (
                {"kind": "redis", "url": f"redis://127.0.0.1:{port}"},
                [redis.pid],
            )
        for name, (spec, pids) in specs.items():
            print("==", name, flush=True)
            row: dict[str, Any] = {}
            got = stream(spec, args.seconds, 0)
            row["throughput"] = len(got["latencies"]) / max(1e-9, got["last"] - got["first"])
            got = stream(spec, args.seconds, PACED_RATE)
            row["paced_p50_ms"] = 1000 * percentile(got["latencies"], 0.5)
            row["paced_p99_ms"] = 1000 * percentile(got["latencies"], 0.99)
            got = stream(spec, args.seconds, SLOW_RATE)
            row["slow_p50_ms"] = 1000 * percentile(got["latencies"], 0.5)
            row["slow_p99_ms"] = 1000 * percentile(got["latencies"], 0.99)
            row.update(idle(spec, pids))
            results[name] = row
            print(json.dumps(row), flush=True)
        print("== failover", flush=True)
        spec = specs["chanlite cluster (3 dqlite nodes)"][0]
        kill_leader = lambda: cluster.kill(cluster.leader())  # noqa: E731
        got = stream(spec, 3 * args.seconds, SLOW_RATE, kill=kill_leader)
        results["failover"] = {
            "max_latency_s": max(got["latencies"]),
            "received": len(got["latencies"]),
            "acknowledged": got["acked"],
        }
        print(json.dumps(results["failover"]), flush=True)
    finally:
        cluster.stop()
        if redis is not None:
            redis.send_signal(signal.SIGTERM)
            redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    (out / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# The layer on a 3-node dqlite cluster, beside chanlite on a file and channels_redis",
        "",
        f"`bench/cluster/run.py --seconds {args.seconds:g}`, {time.strftime('%Y-%m-%d')}, "
        "one machine (2 cores, shared with other jobs: loaded, so figures vary from run to run); "
        "the three nodes on 127.0.0.1-3 with `--latency-ms 20`.",
        "",
        "| layer | throughput (msg/s) | paced 200/s p50 / p99 (ms) | paced 50/s p50 / p99 (ms) "
        "| idle client CPU | idle server CPU |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if name == "failover":
            continue
        lines.append(
            f"| {name} | {row['throughput']:.0f} | {row['paced_p50_ms']:.2f} / "
            f"{row['paced_p99_ms']:.2f} | {row['slow_p50_ms']:.2f} / {row['slow_p99_ms']:.2f} | "
            f"{row['client_cpu_pct']:.2f} % | {row['server_cpu_pct']:.2f} % |"
        )
    fo = results["failover"]
    lines += [
        "",
        "Idle: 25 receivers blocked on empty channels for 10 s; client CPU of their process "
        "(getrusage), server CPU of the three nodes or redis-server (/proc). The cluster's "
        "receivers wait on the wake hub and re-check every 5 s (the safety net).",
        "",
        f"Failover: the leader SIGKILLed under 50 msg/s of paced sends: the slowest message "
        f"took {fo['max_latency_s']:.2f} s from send to receive (the election and the retries); "
        f"{fo['acknowledged']} sends acknowledged, {fo['received']} messages received.",
        "",
    ]
    (out / "cluster.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
