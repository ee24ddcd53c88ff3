"""The soak's verdicts: nothing lost, nothing twice (from the workers' logs),
and every curve flat (from the samples). Used by bench/soak/run.py.

Nothing lost. A message whose send returned is expected exactly once, except:

* sent to a process-specific channel of a process that was later SIGKILLed
  (that channel dies with its process: at most once, as in Channels), or a
  group copy to such a channel;
* sent to an ordinary channel that a SIGKILLed process was receiving from,
  before the kill and no longer than `expiry` before it: that process may
  have popped it into its buffers, or received it without logging it yet.
  Its receivers pop only what their waiting receive() calls ask for, so one
  kill can account for at most as many messages per channel as it had
  receive() loops on the channel (`normal_receivers`); more is a loss.

Everything else not received is lost, a receipt of an id twice (or of a group
copy twice on one channel) is a duplicate, and a receipt on another channel
than the one the message was sent to is misdelivered.

Flat. For each curve, the median of its last quarter must not exceed the
median of its second quarter by more than the stated allowance (the first
quarter is warm-up: caches fill, the WAL reaches its checkpoint size).
"""

from __future__ import annotations

import collections
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

#: curve -> (relative allowance, absolute allowance): flat when
#: median(last quarter) <= median(second quarter) * (1 + relative) + absolute.
FLAT = {
    "rss_s0_mib": (0.10, 2.0),  # the process that is never killed
    "fds_s0": (0.0, 2.0),
    "db_wal_mib": (0.25, 1.0),
    "p99_ms": (1.0, 25.0),  # a loaded machine's p99 is noisy: at most twice, + 25 ms
}


@dataclass
class Incarnation:
    slot: int
    incarnation: int
    channels: list[str]
    joined_at: float | None = None
    killed_at: float | None = None


@dataclass
class Verdict:
    sent: int = 0
    group_sends: int = 0
    received: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    misdelivered: list[str] = field(default_factory=list)
    to_killed_local: int = 0  # sends and group copies to a killed process's own channels
    to_killed_normal: int = 0  # popped (or being logged) by a process at its kill
    group_overdelivered: list[str] = field(default_factory=list)
    flat: dict[str, dict[str, float | bool]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.duplicates
            and not self.misdelivered
            and not self.group_overdelivered
            and all(f["flat"] for f in self.flat.values())
        )

    def summary(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "sent": self.sent,
            "group_sends": self.group_sends,
            "received": self.received,
            "lost": len(self.lost),
            "lost_examples": self.lost[:10],
            "duplicates": len(self.duplicates),
            "duplicate_examples": self.duplicates[:10],
            "misdelivered": len(self.misdelivered),
            "group_overdelivered": len(self.group_overdelivered),
            "to_killed_local": self.to_killed_local,
            "to_killed_normal": self.to_killed_normal,
            "flat": self.flat,
        }


def read_incarnations(workdir: Path, kills: list[tuple[int, int, float]]) -> list[Incarnation]:
    incarnations = {}
    for path in (workdir / "peers").glob("s*.json"):
        peer = json.loads(path.read_text())
        key = (peer["slot"], peer["incarnation"])
        incarnations[key] = Incarnation(peer["slot"], peer["incarnation"], peer["channels"])
    for slot, incarnation, at in kills:
        if (slot, incarnation) in incarnations:
            incarnations[(slot, incarnation)].killed_at = at
    for (slot, incarnation), inc in incarnations.items():
        for line in _lines(workdir / "logs" / f"s{slot}-{incarnation}.log"):
            if line[0] == "J":
                inc.joined_at = float(line[1])
    return list(incarnations.values())


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    # A SIGKILL cannot tear a line written by one write(), but keep only whole ones.
    return [
        ln.split(" ") for ln in path.read_text().splitlines() if ln.endswith(tuple("0123456789"))
    ]


def account(
    workdir: Path,
    kills: list[tuple[int, int, float]],
    expiry: float,
    normal_receivers: int,
    slots: int,
    group_expiry: float | None = None,
) -> Verdict:
    verdict = Verdict()
    incarnations = read_incarnations(workdir, kills)
    owner = {ch: inc for inc in incarnations for ch in inc.channels}
    sends: dict[str, tuple[str, float]] = {}
    groups: dict[str, tuple[str, int, float]] = {}
    receipts: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted((workdir / "logs").glob("s*.log")):
        for line in _lines(path):
            kind = line[0]
            if kind == "S":
                sends[line[1]] = (line[2], float(line[3]))
            elif kind == "G":
                groups[line[1]] = (line[2], int(line[3]), float(line[4]))
            elif kind == "R":
                receipts[line[1]].append(line[2])
    verdict.sent = len(sends)
    verdict.group_sends = len(groups)
    verdict.received = sum(len(r) for r in receipts.values())

    # Kills that may account for a message on an ordinary channel: (kill, channel) -> budget.
    budget: dict[tuple[int, int, str], int] = {}
    kill_list = [(s, i, at) for s, i, at in kills]

    def excuse_normal(channel: str, sent_at: float) -> bool:
        readers = range(slots) if channel == "soak.shared" else [int(channel[len("soak.w") :])]
        for slot, incarnation, at in kill_list:
            if slot in readers and sent_at <= at <= sent_at + expiry:
                key = (slot, incarnation, channel)
                left = budget.setdefault(key, normal_receivers)
                if left > 0:
                    budget[key] = left - 1
                    return True
        return False

    for msg_id, (channel, sent_at) in sends.items():
        got = receipts.get(msg_id, [])
        if len(got) > 1:
            verdict.duplicates.append(msg_id)
        if any(c != channel for c in got):
            verdict.misdelivered.append(msg_id)
        if got or channel == "soak.void":
            continue
        inc = owner.get(channel)
        if inc is not None:
            if inc.killed_at is not None:
                verdict.to_killed_local += 1
            else:
                verdict.lost.append(f"{msg_id} to {channel} sent at {sent_at:.3f}")
        elif excuse_normal(channel, sent_at):
            verdict.to_killed_normal += 1
        else:
            verdict.lost.append(f"{msg_id} to {channel} sent at {sent_at:.3f}")

    group_expiry = expiry * 2 if group_expiry is None else group_expiry
    for msg_id, (group, delivered, sent_at) in groups.items():
        got = receipts.get(msg_id, [])
        if len(got) != len(set(got)):
            verdict.duplicates.append(msg_id)
        if len(got) > delivered:
            verdict.group_overdelivered.append(msg_id)
        if group != "soak.all":
            continue  # soak.churn's members change under it: only checked for twice
        for inc in incarnations:
            if inc.joined_at is None or sent_at <= inc.joined_at:
                continue
            missing = [ch for ch in inc.channels if ch not in got]
            if inc.killed_at is not None:
                # Copies go to a killed process's channels only while its
                # memberships live: until group_expiry after its death.
                if sent_at < inc.killed_at + group_expiry:
                    verdict.to_killed_local += len(missing)
            elif missing:
                verdict.lost.append(f"{msg_id} to {group} ({missing[0]}) sent at {sent_at:.3f}")
    return verdict


def flatness(rows: list[dict[str, float]], verdict: Verdict) -> None:
    """Judge every curve of FLAT over the samples (dicts of the CSV's columns)."""
    if len(rows) < 8:
        for name in FLAT:
            verdict.flat[name] = {"flat": False, "too_few_samples": len(rows)}
        return
    start, end = rows[0]["t"], rows[-1]["t"]
    quarter = (end - start) / 4
    for name, (relative, absolute) in FLAT.items():

        def median_of(q: int, name: str = name) -> float:
            lo, hi = start + q * quarter, start + (q + 1) * quarter
            values = [r[name] for r in rows if lo <= r["t"] <= hi and r[name] == r[name]]
            return statistics.median(values) if values else float("nan")

        second, last = median_of(1), median_of(3)
        limit = second * (1 + relative) + absolute
        verdict.flat[name] = {
            "second_quarter_median": round(second, 3),
            "last_quarter_median": round(last, 3),
            "limit": round(limit, 3),
            "flat": last <= limit,
        }
