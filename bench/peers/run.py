#!/usr/bin/env python3
"""chanlite beside its peers: one command, one run, every channel layer side by side.

    python3 bench/peers/run.py [--quick] [--out bench/results]

Starts its own redis-server and PostgreSQL (loopback only, stopped at the end), builds chanlite
into build-peers/, and measures chanlite, channels_redis (RedisChannelLayer and
RedisPubSubChannelLayer), channels-lite (ORM and AIO layers), channels-postgres and
InMemoryChannelLayer (in-process only) on the same workloads:

  1. point-to-point throughput, producer and consumer in two processes, 100 B and 10 KB;
  2. send->receive latency across processes, p50/p99/p99.9, paced at 200 and at 2,000 msg/s
     (with the rate each layer achieved) and saturated;
  3. group_send fan-out to 10, 100 and 1,000 members spread over 4 consumer processes;
  4. CPU of 100 idle consumers blocked in receive();
  5. the C-level floor from build/bench/bench_floor, if built.

Writes RESULTS.md, results.json and chart.png to --out and prints chanlite's ratio to each peer.
A layer that is missing or broken shows as "n/a (reason)"; the run goes on without it.
Installs nothing itself: when something is missing it calls bench/peers/install.sh (unless
--no-install).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import layers  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402
from layers import FactoryContext, LayerSpec, Unavailable  # noqa: E402

MP = mp.get_context("spawn")
WINDOW = 100  # saturated point-to-point: at most this many messages sent and not yet received
CONSUMER_PROCS = 4  # fan-out and idle consumers are spread over this many processes
MANY_PRODUCERS = 2  # many producers: processes sending at once ...
MANY_COROUTINES = 8  # ... each with this many coroutines sending at once
MANY_CONSUMERS = 2  # ... to this many consumer processes
IDLE_CONSUMERS = 100
PY_MODULES = (
    "channels",
    "django",
    "msgpack",
    "channels_redis",
    "redis",
    "channels_lite",
    "aiosqlite",
    "aiosqlitepool",
    "msgspec",
    "channels_postgres",
    "psycopg",
    "psycopg_pool",
    "matplotlib",
)


@dataclass(frozen=True)
class Plan:
    runs: int
    tp_seconds: float
    lat_seconds: float
    lat_rate: float
    lat_rate_high: float
    fan_sizes: tuple[int, ...]
    fan_runs: int
    fan_rounds: int
    round_timeout: float
    idle_seconds: float
    idle_runs: int
    time_limit: float


FULL = Plan(
    runs=3,
    tp_seconds=5.0,
    lat_seconds=10.0,
    lat_rate=200.0,
    lat_rate_high=2000.0,
    fan_sizes=(10, 100, 1000),
    fan_runs=3,
    fan_rounds=5,
    round_timeout=15.0,
    idle_seconds=10.0,
    idle_runs=3,
    time_limit=80 * 60,
)
QUICK = Plan(
    runs=2,
    tp_seconds=1.5,
    lat_seconds=2.0,
    lat_rate=200.0,
    lat_rate_high=2000.0,
    fan_sizes=(10, 100, 1000),
    fan_runs=1,
    fan_rounds=3,
    round_timeout=8.0,
    idle_seconds=3.0,
    idle_runs=1,
    time_limit=25 * 60,
)


class WorkerError(Exception):
    """A worker process reported an error, died, or missed its deadline."""


class TimeLimit(BaseException):
    """The run's overall time limit passed."""


def log(text: str) -> None:
    # A closed stdout (`run.py | head`) must not stop the run: the files are what counts.
    with contextlib.suppress(OSError):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- worker processes -------------------------------------------------------------------------

LIVE: set[BaseProcess] = set()


class Workers:
    """The worker processes of one measurement, and the queue they report on."""

    def __init__(self) -> None:
        self.q: Any = MP.Queue()
        self.procs: dict[str, BaseProcess] = {}
        self.done: set[str] = set()
        self.pending: list[tuple[Any, ...]] = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        rid: str,
        kind: str,
        spec: LayerSpec,
        params: dict[str, Any],
        counters: Any,
        flag: Any = None,
    ) -> BaseProcess:
        import workers

        proc = MP.Process(
            target=workers.child,
            name=f"bench-{rid}",
            daemon=True,
            args=(kind, spec, {**params, "id": rid}, self.q, counters, flag),
        )
        proc.start()
        self.procs[rid] = proc
        LIVE.add(proc)
        return proc

    def _take(self, tag: str, want: set[str]) -> tuple[Any, ...] | None:
        for i, msg in enumerate(self.pending):
            if msg[0] == tag and msg[1] in want:
                return self.pending.pop(i)
        return None

    def expect(self, tag: str, rids: Sequence[str], timeout: float) -> dict[str, Any]:
        """Wait for message `tag` from each of `rids`; raise WorkerError on any error."""
        want = set(rids)
        got: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while want:
            msg = self._take(tag, want)
            if msg is None:
                msg = self._get(deadline, tag, want)
            if msg[0] == "error":
                raise WorkerError(self._errors(msg))
            if msg[0] == "result":
                self.done.add(msg[1])
            if msg[0] != tag or msg[1] not in want:
                self.pending.append(msg)
                continue
            got[msg[1]] = msg[2]
            want.discard(msg[1])
        return got

    def _errors(self, first: tuple[Any, ...]) -> str:
        """The first error and those other workers report within a second after it."""
        texts = [f"{first[1]}: {first[2]}"]
        deadline = time.monotonic() + 1.0
        while len(texts) < 4 and time.monotonic() < deadline:
            try:
                msg = tuple(self.q.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
            seen = {text.split(": ", 1)[1] for text in texts}
            if msg[0] == "error" and msg[2] not in seen:
                texts.append(f"{msg[1]}: {msg[2]}")
        return "; ".join(texts)

    def _get(self, deadline: float, tag: str, want: set[str]) -> tuple[Any, ...]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"timed out waiting for {tag} from {', '.join(sorted(want))}")
            try:
                return tuple(self.q.get(timeout=min(0.5, remaining)))
            except queue.Empty:
                pass
            for rid, proc in self.procs.items():
                if proc.exitcode is not None and rid not in self.done:
                    with contextlib.suppress(queue.Empty):
                        return tuple(self.q.get(timeout=0.5))
                    raise WorkerError(f"{rid} exited with code {proc.exitcode} and said nothing")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs.values():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            LIVE.discard(proc)
        with contextlib.suppress(Exception):
            self.q.close()
            self.q.cancel_join_thread()


def kill_live() -> None:
    for proc in list(LIVE):
        with contextlib.suppress(Exception):
            if proc.is_alive():
                proc.kill()
            proc.join(2)


# --- CPU accounting via /proc -----------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, with_reaped_children: bool = False) -> float:
    """CPU time of all the threads of `pid` (and, optionally, of its waited-for children).

    Live threads are read from /proc/PID/task/*/schedstat (nanoseconds); a thread that already
    ended counts through /proc/PID/stat only at clock-tick resolution, so prefer schedstat and
    use stat's ticks for what schedstat cannot see (reaped children).
    """
    total = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0]) / 1e9
    except OSError:
        total = -1.0
    fields = _stat(pid)
    if fields is None:
        return max(total, 0.0)
    if total < 0:
        total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    if with_reaped_children:
        total += (int(fields[13]) + int(fields[14])) / CLK_TCK
    return total


def descendants(pid: int) -> list[int]:
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parent_of[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parent_of.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def server_cpu(server: servers.Server | None) -> float:
    if server is None:
        return 0.0
    total = cpu_seconds(server.pid, with_reaped_children=True)
    return total + sum(cpu_seconds(pid) for pid in descendants(server.pid))


# --- one measurement of each kind -------------------------------------------------------------


@dataclass
class Bench:
    plan: Plan
    servers: dict[str, servers.Server] = field(default_factory=dict)

    def p2p(
        self, spec: LayerSpec, size: int, rate: float | None, seconds: float, latency: bool
    ) -> dict[str, Any]:
        counters = MP.RawArray("q", 2)
        params: dict[str, Any] = {
            "size": size,
            "rate": rate,
            "duration": seconds,
            "window": WINDOW,
            "latency": latency,
            "pause": 0.0005 if spec.cross_process else 0.0,
        }
        limit = seconds + 120
        with Workers() as w:
            if spec.cross_process:
                w.start("consumer", "p2p_consumer", spec, params, counters)
                channel = w.expect("ready", ["consumer"], 120)["consumer"]
                w.start("producer", "p2p_producer", spec, {**params, "channel": channel}, counters)
                res = w.expect("result", ["producer", "consumer"], limit)
                consumer, producer = res["consumer"], res["producer"]
            else:
                w.start("inproc", "p2p_inproc", spec, params, counters)
                consumer = w.expect("result", ["inproc"], limit)["inproc"]
                producer = consumer["producer"]
        send_rate = producer["sent"] / producer["elapsed"] if producer["elapsed"] > 0 else 0.0
        return {
            "rate": consumer["rate"],
            # What both ends kept up with: under a pace, a layer that falls behind sends fewer
            # messages than asked, or the consumer drains a backlog after the sender stopped.
            "achieved": min(send_rate, consumer["rate"]),
            "latency": consumer["latency"],
            "sent": producer["sent"],
            "received": consumer["received"],
            "full": producer["full"],
        }

    def many(self, spec: LayerSpec, seconds: float) -> dict[str, Any]:
        """MANY_PRODUCERS producer processes of MANY_COROUTINES coroutines each, sending 100 B
        messages at once to MANY_CONSUMERS consumer processes: messages per second received in
        all, from the first timed message received to the last."""
        consumers, producers = MANY_CONSUMERS, MANY_PRODUCERS
        counters = MP.RawArray("q", 2 * consumers + producers)
        params: dict[str, Any] = {
            "size": 100,
            "duration": seconds,
            "window": WINDOW * producers * MANY_COROUTINES // 4,
            "pause": 0.0005 if spec.cross_process else 0.0,
            "coroutines": MANY_COROUTINES,
            "consumers": consumers,
            "producers": producers,
        }
        limit = seconds + 120
        with Workers() as w:
            if spec.cross_process:
                ids = [f"consumer{k}" for k in range(consumers)]
                for k, rid in enumerate(ids):
                    w.start(rid, "many_consumer", spec, {**params, "index": k}, counters)
                ready = w.expect("ready", ids, 120)
                channels = [ready[rid] for rid in ids]
                pids = [f"producer{p}" for p in range(producers)]
                for p, rid in enumerate(pids):
                    w.start(
                        rid,
                        "many_producer",
                        spec,
                        {**params, "index": p, "channels": channels},
                        counters,
                    )
                res = w.expect("result", [*pids, *ids], limit)
                got = [res[rid] for rid in ids]
                sent = sum(res[rid]["sent"] for rid in pids)
            else:
                w.start("inproc", "many_inproc", spec, params, counters)
                res = w.expect("result", ["inproc"], limit)["inproc"]
                got = res["consumers"]
                sent = sum(p["sent"] for p in res["producers"])
        received = sum(c["received"] for c in got)
        first = min(c["first"] for c in got if c["received"])
        last = max(c["last"] for c in got if c["received"])
        rate = (received - 1) / ((last - first) / 1e9) if received > 1 and last > first else 0.0
        return {"rate": rate, "sent": sent, "received": received}

    def fanout(self, spec: LayerSpec, total: int, run: int) -> tuple[list[float], str | None]:
        plan = self.plan
        group = f"bench-fanout-{total}-{run}-{uuid.uuid4().hex[:8]}"
        procs = min(CONSUMER_PROCS, total) if spec.cross_process else 1
        counters = MP.RawArray("q", 2 * procs)
        produce_limit = 120 + plan.fan_rounds * (plan.round_timeout + 1)
        with Workers() as w:
            if spec.cross_process:
                flag = MP.Event()
                ids = [f"members{k}" for k in range(procs)]
                for k, rid in enumerate(ids):
                    members = total // procs + (1 if k < total % procs else 0)
                    w.start(
                        rid,
                        "fanout_consumer",
                        spec,
                        {
                            "group": group,
                            "members": members,
                            "index": k,
                            "timeout": produce_limit + 180,
                        },
                        counters,
                        flag,
                    )
                w.expect("ready", ids, 240)
                w.start(
                    "producer",
                    "fanout_producer",
                    spec,
                    {
                        "group": group,
                        "total": total,
                        "procs": procs,
                        "rounds": plan.fan_rounds,
                        "pause": 0.001,
                        "round_timeout": plan.round_timeout,
                    },
                    counters,
                )
                produced = w.expect("result", ["producer"], produce_limit)["producer"]
                flag.set()
                members_res = list(w.expect("result", ids, 60).values())
            else:
                w.start(
                    "inproc",
                    "fanout_inproc",
                    spec,
                    {
                        "group": group,
                        "total": total,
                        "rounds": plan.fan_rounds,
                        "round_timeout": plan.round_timeout,
                    },
                    counters,
                )
                produced = w.expect("result", ["inproc"], produce_limit + 60)["inproc"]
                members_res = [produced]
        times: list[float] = []
        duplicates = 0
        for r, t0 in enumerate(produced["starts"]):
            slots = [m["rounds"].get(r, [0, 0, 0]) for m in members_res]
            duplicates += sum(slot[2] for slot in slots)
            if sum(slot[0] for slot in slots) == total:
                times.append((max(slot[1] for slot in slots) - t0) / 1e6)
        notes = [produced["incomplete"]] if produced.get("incomplete") else []
        if duplicates:
            notes.append(
                f"{duplicates} duplicate deliveries in {len(produced['starts'])} rounds "
                f"of {total} members (timed from each member's first copy)"
            )
        return times, "; ".join(notes) or None

    def idle(self, spec: LayerSpec) -> tuple[float, float]:
        plan = self.plan
        procs = CONSUMER_PROCS if spec.cross_process else 1
        server = self.servers.get(spec.server)
        window = (MP.Event(), MP.Event())
        with Workers() as w:
            ids = [f"idle{k}" for k in range(procs)]
            for rid in ids:
                w.start(
                    rid,
                    "idle",
                    spec,
                    {"consumers": IDLE_CONSUMERS // procs, "hold": plan.idle_seconds + 300},
                    None,
                    window,
                )
            w.expect("ready", ids, 240)
            time.sleep(0.5)
            s0, t0 = server_cpu(server), time.monotonic()
            window[0].set()
            time.sleep(plan.idle_seconds)
            window[1].set()
            s1, wall = server_cpu(server), time.monotonic() - t0
            measured = w.expect("result", ids, 30)
        client = sum(m["cpu"] for m in measured.values())
        return 100 * client / plan.idle_seconds, 100 * (s1 - s0) / wall

    def simple(self, spec: LayerSpec, kind: str, timeout: float) -> dict[str, Any]:
        with Workers() as w:
            w.start(kind, kind, spec, {}, None)
            return dict(w.expect("result", [kind], timeout)[kind])


# --- the run ----------------------------------------------------------------------------------


def missing_dependencies() -> list[str]:
    missing = [m for m in PY_MODULES if importlib.util.find_spec(m) is None]
    if servers.find_redis() is None:
        missing.append("redis-server")
    if servers.find_pg_bin() is None:
        missing.append("postgresql")
    return missing


def install_if_missing(no_install: bool) -> None:
    missing = missing_dependencies()
    if not missing:
        return
    if no_install:
        log(f"missing: {', '.join(missing)} (--no-install: those layers will be n/a)")
        return
    log(f"missing: {', '.join(missing)}; running bench/peers/install.sh")
    try:
        done = subprocess.run(["bash", str(HERE / "install.sh")], timeout=1200, check=False)
        if done.returncode != 0:
            log(f"install.sh exited {done.returncode}; going on with what is there")
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"install.sh failed: {exc}; going on with what is there")
    importlib.invalidate_caches()


def keep_tail(src: Path, dst: Path, limit: int) -> None:
    """Copy the last `limit` bytes of the workers' log next to the results."""
    with src.open("rb") as f:
        f.seek(max(0, src.stat().st_size - limit))
        dst.write_bytes(f.read())


def uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return Path("/proc/loadavg").read_text().strip()


def run_floor(quick: bool) -> tuple[str | None, str]:
    exe = REPO / "build" / "bench" / "bench_floor"
    so = REPO / "build" / "chanlite.so"
    if not exe.exists():
        source = (
            "bench/floor.c exists"
            if (REPO / "bench" / "floor.c").exists()
            else "bench/floor.c does not exist yet"
        )
        return None, f"missing: build/bench/bench_floor is not built ({source})"
    if not so.exists():
        so = REPO / "build-peers" / "chanlite.so"
    tries = (
        [[str(exe), str(so), "--quick"]]
        if quick
        else [[str(exe), str(so)], [str(exe), str(so), "--quick"]]
    )
    error = ""
    for cmd in tries:
        try:
            done = subprocess.run(
                cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = f"{' '.join(cmd)}: {exc}"
            continue
        if done.returncode == 0:
            return done.stdout, " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))
        error = f"`{' '.join(cmd)}` exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return None, error


def versions(ctx: FactoryContext) -> dict[str, str]:
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in (
        "channels",
        "Django",
        "channels-redis",
        "redis",
        "channels-lite",
        "aiosqlite",
        "aiosqlitepool",
        "channels-postgres",
        "psycopg",
        "psycopg-pool",
        "msgpack",
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    found["redis-server"] = servers.redis_version()
    found["PostgreSQL"] = servers.postgres_version()
    import sqlite3

    found["SQLite (Python's)"] = sqlite3.sqlite_version
    found["Python"] = sys.version.split()[0]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        found["chanlite (repo HEAD)"] = commit.stdout.strip() or "unknown"
    return found


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeLimit(f"the run's {seconds / 60:.0f} min time limit passed")

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise TimeLimit(f"stopped by signal {signum}")

    old_alarm = signal.signal(signal.SIGALRM, expired)
    old_term = signal.signal(signal.SIGTERM, terminated)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


WORKLOADS = ("throughput", "many", "latency", "fanout", "idle")


def measure(
    bench: Bench,
    specs: list[LayerSpec],
    results: report.Results,
    workloads: Sequence[str] = WORKLOADS,
) -> None:
    plan = bench.plan

    def attempt(metric_keys: Sequence[str], spec: LayerSpec, fn: Any) -> Any:
        if any(spec.name in results.failed.get(k, {}) for k in metric_keys):
            return None  # failed in an earlier run of this workload: don't wait on it again
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one layer's failure must not stop the run
            log(f"  {spec.name}: FAILED {exc}")
            for key in metric_keys:
                results.fail(key, spec.name, str(exc))
            return None

    def flush_all() -> None:
        for spec in specs:
            with contextlib.suppress(WorkerError, OSError):
                bench.simple(spec, "flush", 120)

    # 1 + 2b: saturated point to point, 100 B (throughput and latency) and 10 KB (throughput)
    for size, key in ((100, "tp_100"), (10240, "tp_10k")) if "throughput" in workloads else ():
        lat_keys = ("lat_sat_p50", "lat_sat_p99", "lat_sat_p999") if size == 100 else ()
        for run in range(plan.runs):
            for spec in specs:
                log(f"throughput {size} B, run {run + 1}/{plan.runs}: {spec.name}")
                res = attempt(
                    (key, *lat_keys),
                    spec,
                    lambda s=spec, n=size: bench.p2p(s, n, None, plan.tp_seconds, latency=n == 100),
                )
                if res is None:
                    continue
                results.add(key, spec.name, res["rate"])
                if res["received"] != res["sent"]:
                    results.note(
                        key,
                        spec.name,
                        f"{res['sent'] - res['received']} of {res['sent']} messages lost",
                        run + 1,
                    )
                lat = res["latency"]
                for lat_key, q in zip(lat_keys, ("p50", "p99", "p999"), strict=False):
                    if q in lat:
                        results.add(lat_key, spec.name, lat[q])
                log(
                    f"  {res['rate']:,.0f} msg/s"
                    + (f", p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms" if lat else "")
                )
        flush_all()

    # 1b: many producers at once (issue 11), 100 B
    for run in range(plan.runs if "many" in workloads else 0):
        for spec in specs:
            log(f"many producers, run {run + 1}/{plan.runs}: {spec.name}")
            res = attempt(("tp_many",), spec, lambda s=spec: bench.many(s, plan.tp_seconds))
            if res is None:
                continue
            results.add("tp_many", spec.name, res["rate"])
            if res["received"] != res["sent"]:
                results.note(
                    "tp_many",
                    spec.name,
                    f"{res['sent'] - res['received']} of {res['sent']} messages lost",
                    run + 1,
                )
            log(f"  {res['rate']:,.0f} msg/s")
    if "many" in workloads:
        flush_all()

    # 2a: latency at a paced rate, low (200 msg/s) and high (2,000 msg/s)
    paces = (
        (plan.lat_rate, report.PACED_LOW),
        (plan.lat_rate_high, report.PACED_HIGH),
    )
    for pace, keys in paces if "latency" in workloads else ():
        lat_keys = (keys.p50, keys.p99, keys.p999)
        for run in range(plan.runs):
            for spec in specs:
                log(f"latency at {pace:,.0f} msg/s, run {run + 1}/{plan.runs}: {spec.name}")
                res = attempt(
                    (*lat_keys, keys.rate),
                    spec,
                    lambda s=spec, r=pace: bench.p2p(s, 100, r, plan.lat_seconds, latency=True),
                )
                if res is None:
                    continue
                lat = res["latency"]
                if not lat:
                    results.fail(lat_keys[0], spec.name, "no message received")
                    continue
                for lat_key, q in zip(lat_keys, ("p50", "p99", "p999"), strict=True):
                    results.add(lat_key, spec.name, lat[q])
                results.add(keys.rate, spec.name, res["achieved"])
                if not report.kept_pace(res["achieved"], pace):
                    results.note(
                        keys.rate,
                        spec.name,
                        f"did not keep the pace: {res['achieved']:,.0f} of {pace:,.0f} msg/s",
                        run + 1,
                    )
                log(
                    f"  p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, p99.9 {lat['p999']:.3f}"
                    f" ms ({lat['n']:.0f} messages, {res['achieved']:,.0f} msg/s achieved)"
                )
        flush_all()

    # 3: group_send fan-out
    for total in plan.fan_sizes if "fanout" in workloads else ():
        key = f"fan_{total}"
        for run in range(plan.fan_runs):
            for spec in specs:
                log(f"fan-out to {total}, run {run + 1}/{plan.fan_runs}: {spec.name}")
                res = attempt((key,), spec, lambda s=spec, t=total, r=run: bench.fanout(s, t, r))
                if res is None:
                    continue
                times, incomplete = res
                if incomplete:
                    results.note(key, spec.name, incomplete, run + 1)
                if not times:
                    results.fail(key, spec.name, incomplete or "no round completed")
                    continue
                results.add(key, spec.name, report.median(times))
                log(f"  rounds (ms): {', '.join(f'{t:.2f}' for t in times)}")
        flush_all()

    # 4: idle consumers
    for run in range(plan.idle_runs if "idle" in workloads else 0):
        for spec in specs:
            log(f"{IDLE_CONSUMERS} idle consumers, run {run + 1}/{plan.idle_runs}: {spec.name}")
            res = attempt(
                ("idle_client", "idle_server", "idle_total"), spec, lambda s=spec: bench.idle(s)
            )
            if res is None:
                continue
            client, server = res
            results.add("idle_client", spec.name, client)
            if spec.server:
                results.add("idle_server", spec.name, server)
            results.add("idle_total", spec.name, client + server)
            log(f"  clients {client:.2f} % of a core, server {server:.2f} %")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, fewer repetitions")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--layers", help="comma-separated layer names to run (default: all)")
    parser.add_argument(
        "--workloads",
        help=f"comma-separated workloads to run, of {','.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--runs", type=int, help="repetitions of each workload (default: plan)")
    parser.add_argument(
        "--no-install", action="store_true", help="do not call install.sh when something is missing"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = replace(plan, runs=args.runs, fan_runs=args.runs, idle_runs=args.runs)
    workloads = [w.strip() for w in args.workloads.split(",")] if args.workloads else WORKLOADS
    if unknown := set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}: choose from {','.join(WORKLOADS)}")
    out: Path = args.out if args.out.is_absolute() else Path.cwd() / args.out
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    load_before = uptime()
    log(f"load before: {load_before}")
    install_if_missing(args.no_install)
    tmp = Path(tempfile.mkdtemp(prefix="chanlite-peers-"))
    worker_log = tmp / "workers.log"
    os.environ[layers.WORKER_LOG] = str(worker_log)
    ctx = FactoryContext(repo=REPO, tmp=tmp)
    bench = Bench(plan)
    results = report.Results()
    specs: list[LayerSpec] = []
    floor: tuple[str | None, str] = (None, "not run")
    try:
        with time_limit(plan.time_limit):
            try:
                log("building chanlite into build-peers/")
                ctx.chanlite_so = layers.build_chanlite(REPO, tmp / "meson.log")
            except Unavailable as exc:
                ctx.chanlite_error = str(exc)
                with contextlib.suppress(OSError):
                    shutil.copy(tmp / "meson.log", out / "chanlite-build.log")
            if ctx.chanlite_so is not None:
                os.environ["CHANLITE_EXTENSION"] = str(ctx.chanlite_so)
            try:
                server, ctx.redis_url = servers.start_redis(tmp)
                bench.servers["redis"] = server
                log(f"redis-server pid {server.pid} at {ctx.redis_url}")
            except Exception as exc:  # noqa: BLE001 - reported as the layers' n/a reason
                ctx.redis_error = f"redis-server: {exc}"
                log(ctx.redis_error)
            try:
                server, ctx.postgres = servers.start_postgres(tmp)
                bench.servers["postgres"] = server
                log(f"postgres pid {server.pid} on 127.0.0.1:{ctx.postgres['PORT']}")
            except Exception as exc:  # noqa: BLE001 - reported as the layers' n/a reason
                ctx.postgres_error = f"PostgreSQL: {exc}"
                log(ctx.postgres_error)

            wanted = {n.strip() for n in args.layers.split(",")} if args.layers else None
            for name, factory in layers.FACTORIES:
                if wanted is not None and name not in wanted:
                    continue
                results.layers.append(name)
                try:
                    spec = factory(ctx)
                except Unavailable as exc:
                    results.unavailable[name] = str(exc)
                    log(f"{name}: n/a ({exc})")
                    continue
                if not spec.cross_process:
                    results.in_process.add(name)
                try:
                    info = bench.simple(spec, "probe", 180)
                    log(f"{name}: ok ({info['class']})")
                    specs.append(spec)
                except WorkerError as exc:
                    results.unavailable[name] = str(exc)
                    log(f"{name}: n/a ({exc})")
            measure(bench, specs, results, workloads)
            log("C-level floor")
            floor = run_floor(args.quick)
    except (TimeLimit, KeyboardInterrupt) as exc:
        log(f"stopped early: {exc or type(exc).__name__}; reporting what was measured")
        results.stopped = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a harness bug still leaves a report
        log(f"harness error: {traceback.format_exc()}")
        results.stopped = f"harness error: {type(exc).__name__}: {exc}"
    finally:
        kill_live()
        for server in bench.servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        with contextlib.suppress(OSError):
            keep_tail(worker_log, out / "workers.log", 4 << 20)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    load_after = uptime()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_min": f"{(time.time() - started) / 60:.1f}",
        "mode": "quick" if args.quick else "full",
        "load_before": load_before,
        "load_after": load_after,
        "cpus": str(os.cpu_count()),
        "plan": plan.__dict__,
        "versions": versions(ctx),
    }
    results.floor_output, results.floor_info = floor
    report.write(results, meta, out)
    report.print_ratios(results)
    log(f"load after: {load_after}")
    log(f"wrote {out / 'RESULTS.md'}, {out / 'chart.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
