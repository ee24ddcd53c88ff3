"""The soak: mixed traffic across 4 processes for an hour, one of them
SIGKILLed and restarted every few minutes; nothing may be lost or delivered
twice, and every curve must stay flat.

    python3 bench/soak/run.py                          # 1 h, writes bench/results/soak-1h.*
    python3 bench/soak/run.py --duration 105 --kill-every 20 --sample-every 2 --no-plot

Processes (bench/soak/worker.py) 0..3 send and receive on one database: see
the worker for the mix. Slot 0 is never killed, so that its RSS and
descriptors show whether a long-lived process leaks; slots 1-3 are SIGKILLed
in turn every --kill-every seconds and restarted at once (a new incarnation,
a new process-specific prefix). No kill falls in the last 2 x expiry seconds.
At the end the senders stop, the receivers drain until nothing has arrived
for 2 s, and every process exits cleanly.

Every --sample-every seconds one CSV row: each slot's RSS and open
descriptors, the database's and WAL's sizes, the rows in chanlite's tables,
and the latency percentiles (send to receive) of the messages received since
the last row. Then bench/soak/check.py decides (nothing lost, nothing twice,
every curve flat, as it defines them) and the run exits 1 if any fails.

Writes OUT.csv, OUT.json (settings, kills, the verdict) and OUT.png (unless
--no-plot; needs matplotlib). Keep the working directory with --keep.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check

HERE = Path(__file__).resolve().parent
SLOTS = 4
#: Seconds after its start during which a process's RSS and descriptors are
#: not sampled: it is still importing, which says nothing about leaks.
STARTING = 5.0
COLUMNS = [
    "t",
    *[f"rss_s{i}_mib" for i in range(SLOTS)],
    *[f"fds_s{i}" for i in range(SLOTS)],
    "db_mib",
    "wal_mib",
    "db_wal_mib",
    "messages",
    "queues",
    "memberships",
    "received",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "kills",
    "load1",
]


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        self.settings = {
            "rate": args.rate,
            "expiry": args.expiry,
            "group_expiry": args.group_expiry,
            "local_channels": 3,
            "normal_receivers": 2,
            "slots": SLOTS,
            "capacity": 2000,
        }
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.spawned: dict[int, float] = {}
        self.incarnation = dict.fromkeys(range(SLOTS), 0)
        self.kills: list[tuple[int, int, float]] = []
        self.unexpected_exits: list[str] = []
        self.offsets: dict[Path, int] = {}
        self.rows: list[dict[str, float]] = []
        for sub in ("logs", "peers"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)

    def spawn(self, slot: int) -> None:
        inc = self.incarnation[slot]
        env = dict(os.environ, SOAK_SETTINGS=json.dumps(self.settings))
        self.spawned[slot] = time.monotonic()
        with open(self.dir / f"s{slot}-{inc}.err", "wb") as err:
            self.procs[slot] = subprocess.Popen(
                [sys.executable, str(HERE / "worker.py"), str(self.dir), str(slot), str(inc)],
                env=env,
                stdout=err,
                stderr=subprocess.STDOUT,
            )

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills.append((slot, self.incarnation[slot], time.time()))
        self.incarnation[slot] += 1
        self.spawn(slot)

    def check_alive(self) -> None:
        for slot, proc in self.procs.items():
            if proc.poll() is not None:
                inc = self.incarnation[slot]
                self.unexpected_exits.append(f"s{slot}-{inc} exited {proc.returncode}")
                self.incarnation[slot] += 1
                self.spawn(slot)

    def new_latencies(self) -> list[float]:
        latencies = []
        for path in (self.dir / "logs").glob("s*.log"):
            start = self.offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = start + len(whole)
            for line in whole.decode().splitlines():
                if line.startswith("R "):
                    latencies.append(float(line.rsplit(" ", 1)[1]) * 1000)
        return latencies

    def table_rows(self) -> tuple[float, float, float]:
        nan = float("nan")
        try:
            db = sqlite3.connect(f"file:{self.dir / 'soak.sqlite3'}?mode=ro", uri=True, timeout=1)
            try:
                return tuple(  # type: ignore[return-value]
                    db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in ("chanlite_message", "chanlite_queue", "chanlite_group")
                )
            finally:
                db.close()
        except sqlite3.Error:
            return nan, nan, nan

    def sample(self, started: float) -> None:
        row: dict[str, float] = {"t": round(time.time() - started, 1)}
        for slot in range(SLOTS):
            pid = self.procs[slot].pid
            if time.monotonic() - self.spawned[slot] < STARTING:
                row[f"rss_s{slot}_mib"] = row[f"fds_s{slot}"] = float("nan")  # still importing
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss_kib = int(status.split("VmRSS:")[1].split()[0])
                row[f"rss_s{slot}_mib"] = round(rss_kib / 1024, 2)
                row[f"fds_s{slot}"] = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, IndexError):
                row[f"rss_s{slot}_mib"] = row[f"fds_s{slot}"] = float("nan")
        db = self.dir / "soak.sqlite3"
        wal = self.dir / "soak.sqlite3-wal"
        row["db_mib"] = round(db.stat().st_size / 2**20, 3) if db.exists() else 0.0
        row["wal_mib"] = round(wal.stat().st_size / 2**20, 3) if wal.exists() else 0.0
        row["db_wal_mib"] = round(row["db_mib"] + row["wal_mib"], 3)
        row["messages"], row["queues"], row["memberships"] = self.table_rows()
        latencies = sorted(self.new_latencies())
        row["received"] = len(latencies)
        for name, p in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("max_ms", 1.0)):
            row[name] = round(percentile(latencies, p), 2)
        row["kills"] = len(self.kills)
        row["load1"] = os.getloadavg()[0]  # the machine's, other work included
        self.rows.append(row)
        self.csv.writerow(row)
        self.csv_file.flush()
        if self.args.verbose:
            print(
                f"{row['t']:7.0f}s rss0 {row['rss_s0_mib']:.1f} MiB fds0 {row['fds_s0']} "
                f"db+wal {row['db_wal_mib']:.2f} MiB recv {row['received']} "
                f"p50 {row['p50_ms']} p99 {row['p99_ms']} ms kills {row['kills']}",
                flush=True,
            )

    def drain(self) -> None:
        """Senders stopped: wait until nothing has arrived for 2 s (at most expiry)."""
        (self.dir / "stop-sending").touch()
        deadline = time.monotonic() + self.args.expiry + 5
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 2:
            time.sleep(0.25)
            if self.new_latencies():
                quiet_since = time.monotonic()
        (self.dir / "stop").touch()
        for slot, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.unexpected_exits.append(f"s{slot} did not exit within 30 s of stop")
                continue
            if proc.returncode != 0:
                self.unexpected_exits.append(f"s{slot} exited {proc.returncode} at stop")

    def run(self) -> check.Verdict:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.csv_file = open(f"{out}.csv", "w", newline="")  # noqa: SIM115
        self.csv = csv.DictWriter(self.csv_file, COLUMNS)
        self.csv.writeheader()
        started = time.time()
        for slot in range(SLOTS):
            self.spawn(slot)
        args = self.args
        next_sample = time.monotonic() + args.sample_every
        next_kill = time.monotonic() + args.kill_every
        end = time.monotonic() + args.duration
        last_kill_at = end - 2 * args.expiry
        victim = 0
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, next_kill, end) - time.monotonic()))
            now = time.monotonic()
            self.check_alive()
            if now >= next_kill:
                next_kill += args.kill_every
                if now < last_kill_at:
                    self.kill(1 + victim % (SLOTS - 1))
                    victim += 1
            if now >= next_sample:
                next_sample += args.sample_every
                self.sample(started)
        self.drain()
        self.csv_file.close()
        verdict = check.account(
            self.dir,
            self.kills,
            args.expiry,
            self.settings["normal_receivers"],
            SLOTS,
            args.group_expiry,
        )
        check.flatness(self.rows, verdict)
        return verdict


def plot(rows: list[dict[str, float]], kills: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True)
    for slot in range(SLOTS):
        style = "-" if slot == 0 else ":"
        label = "process 0 (never killed)" if slot == 0 else f"process {slot}"
        axes[0].plot(minutes, [r[f"rss_s{slot}_mib"] for r in rows], style, label=label)
        axes[1].plot(minutes, [r[f"fds_s{slot}"] for r in rows], style, label=label)
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].set_ylabel("open descriptors")
    axes[2].plot(minutes, [r["db_mib"] for r in rows], label="database")
    axes[2].plot(minutes, [r["wal_mib"] for r in rows], label="WAL")
    axes[2].plot(minutes, [r["db_wal_mib"] for r in rows], label="database + WAL")
    axes[2].set_ylabel("MiB")
    for name in ("p50_ms", "p90_ms", "p99_ms"):
        axes[3].plot(minutes, [r[name] for r in rows], label=name.replace("_ms", ""))
    axes[3].set_ylabel("latency, send to receive (ms)")
    axes[3].set_yscale("log")
    axes[4].plot(minutes, [r.get("load1", float("nan")) for r in rows], label="load average, 1 min")
    axes[4].set_ylabel("machine load (2 cores)")
    axes[4].set_xlabel("minutes")
    for ax in axes:
        for at in kills:
            ax.axvline(at / 60, color="0.85", linewidth=0.8, zorder=0)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replot(out: Path) -> None:
    with open(f"{out}.csv", newline="") as f:
        rows = [
            {k: float(v) if v else float("nan") for k, v in r.items()} for r in csv.DictReader(f)
        ]
    report = json.loads(Path(f"{out}.json").read_text())
    kills = [k["at"] for k in report["kills"]]
    minutes = report["settings"]["duration"] / 60
    title = f"chanlite soak: {minutes:.0f} min, 4 processes, {len(kills)} SIGKILLs"
    if report.get("note"):
        title += f"\n{report['note']}"
    plot(rows, kills, Path(f"{out}.png"), title)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600, help="seconds of traffic")
    parser.add_argument("--kill-every", type=float, default=180, help="seconds between kills")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between rows")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="traffic scale (1: ~56 ops/s/process)"
    )
    parser.add_argument("--expiry", type=float, default=10, help="message expiry (s)")
    parser.add_argument("--group-expiry", type=float, default=20, help="group expiry (s)")
    parser.add_argument("--out", default="bench/results/soak-1h", help="output path prefix")
    parser.add_argument("--workdir", help="where the database and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--no-plot", action="store_true", help="no PNG (no matplotlib needed)")
    parser.add_argument("--note", default="", help="a line for the JSON and the plot's title")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    parser.add_argument(
        "--replot", action="store_true", help="only plot OUT.csv and OUT.json again"
    )
    args = parser.parse_args()
    if args.replot:
        replot(Path(args.out))
        return 0

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="chanlite-soak-"))
    # A SIGTERM (a CI timeout) ends the run through the finally below, which
    # takes the workers down with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soak = Soak(args, workdir)
    started = time.time()
    try:
        verdict = soak.run()
    finally:
        for proc in soak.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    summary = verdict.summary()
    if soak.unexpected_exits:
        summary["ok"] = False
    summary["unexpected_exits"] = soak.unexpected_exits
    latencies = [r["p99_ms"] for r in soak.rows if r["p99_ms"] == r["p99_ms"]]
    report = {
        "settings": {**soak.settings, **{k: v for k, v in vars(args).items() if k != "note"}},
        "note": args.note,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_at_end": os.getloadavg(),
        "kills": [
            {"slot": s, "incarnation": i, "at": round(at - started, 1), "at_unix": at}
            for s, i, at in soak.kills
        ],
        "median_sample_p99_ms": statistics.median(latencies) if latencies else None,
        "verdict": summary,
    }
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_plot:
        title = (
            f"chanlite soak: {args.duration / 60:.0f} min, 4 processes, {len(soak.kills)} SIGKILLs"
        )
        if args.note:
            title += f"\n{args.note}"
        plot(soak.rows, [at - started for _, _, at in soak.kills], Path(f"{args.out}.png"), title)
    print(json.dumps(summary, indent=2))
    if args.keep or not summary["ok"]:
        print(f"working directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
