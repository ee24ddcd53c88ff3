#!/usr/bin/env python3
"""Database file and WAL size over minutes of traffic, with bursts.

    python3 bench/disk/run.py                   # 3 minutes
    python3 bench/disk/run.py --seconds 60      # shorter

Processes share one database file, each with its own connection set up as
the Python package sets up its own (WAL, synchronous=NORMAL, a 5 s busy
timeout, journal_size_limit 4 MB):

- two paced senders, 200 messages/s each of 1 KB, alternating between a
  channel (``bench.q``) and a process-specific one (``bench.p!N``), some in
  transactions of their own (so chanlite's WAL hook is in play);
- a burst sender that every 60 s (first at 20 s) sends 20,000 x 1 KB as fast
  as it can;
- two receivers of ``bench.q`` (``channel_wait`` + ``channel_recv``) and one of
  ``bench.p!`` (``channel_wait`` + ``channel_recv_batch(.., 100)``).

The parent samples the file, WAL and freelist sizes and the queue depth
every 0.25 s and writes ``disk.png`` and ``disk.md`` into ``--out``
(default ``bench/results``). The extension is ``CHANLITE_EXTENSION`` or the
one the installed package bundles; the package comes from ``python/``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "python"))

import chanlite  # noqa: E402

BODY = b"x" * 1024
PACED_RATE = 200  # messages per second per paced sender
BURST = 20_000
FIRST_BURST = 20.0
BURST_EVERY = 60.0
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
MB = 1024 * 1024


def connect(path: str) -> sqlite3.Connection:
    conn = chanlite.connect(path, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    return conn


def paced_sender(path: str, index: int, stop: Any, sent: Any) -> None:
    conn = connect(path)
    n = 0
    start = time.monotonic()
    while not stop.is_set():
        due = start + n / PACED_RATE
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        channel = "bench.q" if n % 2 else f"bench.p!{index}"
        if n % 10 == 0:  # one in ten inside a transaction of our own
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("SELECT channel_send(?, ?)", (channel, BODY))
            conn.execute("COMMIT")
        else:
            conn.execute("SELECT channel_send(?, ?)", (channel, BODY))
        n += 1
        with sent.get_lock():
            sent.value += 1
    conn.close()


def burst_sender(path: str, stop: Any, sent: Any, bursts: Any, seconds: float) -> None:
    conn = connect(path)
    start = time.monotonic()
    at = FIRST_BURST
    while at < seconds - 10 and not stop.is_set():
        delay = start + at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        began = time.monotonic() - start
        for i in range(BURST):
            channel = "bench.q" if i % 2 else "bench.p!burst"
            conn.execute("SELECT channel_send(?, ?)", (channel, BODY))
        with sent.get_lock():
            sent.value += BURST
        bursts.put((began, time.monotonic() - start))
        at += BURST_EVERY
    conn.close()


def receiver(path: str, channel: str, batch: bool, stop: Any, received: Any) -> None:
    conn = connect(path)
    while not stop.is_set():
        if not conn.execute("SELECT channel_wait(?, 0.2)", (channel,)).fetchone()[0]:
            continue
        if batch:
            got = len(
                conn.execute(
                    "SELECT message FROM channel_recv_batch(?, 100)", (channel,)
                ).fetchall()
            )
        else:
            got = conn.execute("SELECT channel_recv(?) IS NOT NULL", (channel,)).fetchone()[0]
        if got:
            with received.get_lock():
                received.value += got
    conn.close()


def size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def plot(samples: list[dict[str, float]], bursts: list[tuple[float, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, (ax, depth) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    ax.plot(t, [max(s["db"] / MB, 0.05) for s in samples], label="database file", color="tab:blue")
    ax.plot(t, [max(s["wal"] / MB, 0.05) for s in samples], label="WAL file", color="tab:orange")
    ax.plot(
        t,
        [max(s["free"] / MB, 0.05) for s in samples],
        label="free pages in the file",
        color="tab:gray",
        linestyle=":",
    )
    for began, ended in bursts:
        for axis in (ax, depth):
            axis.axvspan(began, ended, color="tab:red", alpha=0.12, lw=0)
    # Log scale: the file (about 1 MB) and a WAL that a burst can make
    # hundreds of MB (checkpoints starved by overlapping readers) on one plot.
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.05)
    ax.set_ylabel("MB (log scale)")
    ax.set_title(
        "chanlite: file and WAL size under steady traffic (2 x 200 msg/s of 1 KB) "
        f"with bursts of {BURST:,} x 1 KB (shaded)",
        fontsize=10,
    )
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    depth.plot(t, [s["depth"] for s in samples], color="tab:green")
    depth.set_ylabel("messages queued")
    depth.set_xlabel("seconds")
    depth.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def summary(
    samples: list[dict[str, float]],
    bursts: list[tuple[float, float]],
    sent: int,
    received: int,
    seconds: float,
    out: Path,
    png: str,
) -> str:
    def mb(x: float) -> str:
        return f"{x / MB:.2f} MB"

    peak_db = max(s["db"] for s in samples)
    peak_wal = max(s["wal"] for s in samples)
    last = samples[-1]
    # The steady state: samples at least 15 s after the end of any burst.
    quiet = [
        s
        for s in samples
        if s["t"] > 15 and all(not (b - 1 <= s["t"] <= e + 15) for b, e in bursts)
    ]
    lines = [
        "# chanlite: database file and WAL over time",
        "",
        f"`python3 bench/disk/run.py --seconds {seconds:.0f}`; SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.2f}.",
        "",
        "Steady traffic: two processes send 200 messages/s each (1 KB, one in ten inside a "
        "transaction), three receive (two with `channel_recv`, one with "
        f"`channel_recv_batch(.., 100)`); a burst of {BURST:,} x 1 KB every "
        f"{BURST_EVERY:.0f} s. Every connection: WAL, synchronous=NORMAL, "
        "journal_size_limit 4 MB.",
        "",
        f"![file and WAL size over time]({png})",
        "",
        "| figure | value |",
        "|---|---|",
        f"| messages sent / received (the rest were queued at the end) | {sent:,} / {received:,} |",
        f"| bursts (start-end, s) | {', '.join(f'{b:.0f}-{e:.0f}' for b, e in bursts)} |",
        f"| database file: peak | {mb(peak_db)} |",
        f"| database file: at the end | {mb(last['db'])} |",
        f"| WAL: peak | {mb(peak_wal)} |",
        f"| WAL: at the end | {mb(last['wal'])} |",
    ]
    if quiet:
        lines += [
            f"| database file: steady state (≥15 s after bursts), max | "
            f"{mb(max(s['db'] for s in quiet))} |",
            f"| WAL: steady state, max | {mb(max(s['wal'] for s in quiet))} |",
        ]
    for i, (_began, ended) in enumerate(bursts):
        after = [s for s in samples if s["t"] > ended and s["depth"] == 0]
        if after:
            s = after[0]
            lines.append(
                f"| burst {i + 1}: drained at | {s['t']:.0f} s "
                f"(file {mb(s['db'])}, WAL {mb(s['wal'])}) |"
            )
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument(
        "--no-batch",
        action="store_true",
        help="receive bench.p! with channel_recv too, instead of channel_recv_batch",
    )
    args = ap.parse_args()
    if not os.environ.get("CHANLITE_EXTENSION"):
        built = ROOT / "build" / "chanlite.so"
        if built.exists():
            os.environ["CHANLITE_EXTENSION"] = str(built)
    args.out.mkdir(parents=True, exist_ok=True)

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="chanlite-disk-") as tmp:
        path = str(Path(tmp) / "bench.sqlite3")
        setup = connect(path)
        setup.execute("SELECT chanlite_config('capacity', 1000000)")
        setup.execute("SELECT chanlite_config('expiry', 600)")
        stop = ctx.Event()
        sent = ctx.Value("q", 0)
        received = ctx.Value("q", 0)
        bursts_q = ctx.Queue()
        procs = [ctx.Process(target=paced_sender, args=(path, i, stop, sent)) for i in range(2)]
        procs.append(
            ctx.Process(target=burst_sender, args=(path, stop, sent, bursts_q, args.seconds))
        )
        procs += [
            ctx.Process(target=receiver, args=(path, "bench.q", False, stop, received))
            for _ in range(2)
        ]
        procs.append(
            ctx.Process(target=receiver, args=(path, "bench.p!", not args.no_batch, stop, received))
        )
        for p in procs:
            p.start()
        samples: list[dict[str, float]] = []
        start = time.monotonic()
        try:
            while (now := time.monotonic() - start) < args.seconds:
                free, page = setup.execute(
                    "SELECT (SELECT freelist_count FROM pragma_freelist_count),"
                    " (SELECT page_size FROM pragma_page_size)"
                ).fetchone()
                depth = setup.execute(
                    "SELECT coalesce(sum(depth), 0) FROM chanlite_channels"
                ).fetchone()[0]
                samples.append(
                    {
                        "t": now,
                        "db": size(path),
                        "wal": size(path + "-wal"),
                        "free": free * page,
                        "depth": depth,
                    }
                )
                time.sleep(0.25)
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
        bursts: list[tuple[float, float]] = []
        while not bursts_q.empty():
            bursts.append(bursts_q.get())
        setup.close()
    png = "disk.png"
    plot(samples, bursts, args.out / png)
    print(
        summary(
            samples, bursts, sent.value, received.value, args.seconds, args.out / "disk.md", png
        )
    )


if __name__ == "__main__":
    main()
