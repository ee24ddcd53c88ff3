#!/usr/bin/env python3
"""Per-message cost split of the event loop's thread, from py-spy's raw
(collapsed) output of bench/issue11/profile_workload.py:

    python3 bench/issue11/split.py RAW_FILE RATE_HZ MESSAGES
"""

from __future__ import annotations

import collections
import sys

# (category, frames any of which puts a sample in it), first match wins.
CATEGORIES = [
    ("Python GC", ("gc_collect_main",)),
    ("SQLite: writing the commit to the WAL", ("sqlite3WalFrames", "sqlite3PagerCommitPhaseOne")),
    ("SQLite: channel_send's statements", ("fn_send",)),
    ("SQLite: channel_recv_batch's statements", ("batch_filter", "batch_next", "batch_close")),
    ("SQLite: other (begin, peek)", ("sqlite3_step", "sqlite3_prepare_v2", "sqlite3_exec")),
    ("sqlite3 module (binding, cursor, rows)", ("pysqlite_connection_execute", "pysqlite_cursor")),
    ("bell (inotify) and waking", ("_drain", "_on_bell", "drain", "kick")),
    (
        "serialize / deserialize (msgpack)",
        ("SQLiteChannelLayer.serialize", "SQLiteChannelLayer.deserialize", "msgpack"),
    ),
    ("layer send() and transport (Python)", ("SQLiteChannelLayer.send", "LocalTransport.send")),
    ("receiver task and receive() (Python)", ("_Queue.", "SQLiteChannelLayer.receive")),
    ("benchmark's own coroutines", ("main", "consume")),
    ("asyncio event loop", ("_run_once", "Handle._run")),
]


def main() -> None:
    path, hz, messages = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    split: collections.Counter[str] = collections.Counter()
    with open(path) as raw:
        lines = raw.readlines()
    for line in lines:
        stack, count = line.rstrip().rsplit(" ", 1)
        names = [f.split(" (")[0] for f in stack.split(";")]
        if "BaseEventLoop._run_once" not in names:
            continue  # another thread (pool, checkpointer) or start-up
        for category, frames in CATEGORIES:
            if any(n == f or n.startswith(f) for n in names for f in frames):
                split[category] += int(count)
                break
        else:
            split["other"] += int(count)
    total = sum(split.values())
    print(f"event loop thread: {total} samples at {hz:g} Hz = {total / hz:.2f} s busy, ", end="")
    print(f"{total / hz / messages * 1e6:.0f} us per message\n")
    print("| part | share | us per message |")
    print("|---|---:|---:|")
    for category, n in split.most_common():
        print(f"| {category} | {n / total:.1%} | {n / hz / messages * 1e6:.1f} |")


if __name__ == "__main__":
    main()
