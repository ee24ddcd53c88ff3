"""Turn the samples of a run into RESULTS.md, results.json, chart.png and printed ratios.

Re-render a run's RESULTS.md and chart.png from its results.json (also one written before a
workload existed: its rows show as n/a):

    python3 bench/peers/report.py bench/results/results.json [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBJECT = "chanlite"
PEER = "channels_redis"  # the peer issue 11's ratios are taken against
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
PACE_KEPT = 0.95  # a layer whose achieved rate is below this share of the pace fell behind
# 100 idle consumers, chanlite's client + server CPU before issue 11: the last full run that
# landed before it (bench/results/RESULTS.md of 2026-11-23 19:02 UTC, chanlite b9d771e, median
# of 3 runs: 0.005 (0.004 to 0.006) % of a core). Issue 11 must not make it worse.
IDLE_BEFORE_ISSUE11 = 0.005


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # "{low}" and "{high}" stand for the two paced rates
    unit: str
    higher_is_better: bool
    compared: bool = True  # in the chanlite ÷ peer table


@dataclass(frozen=True)
class Paced:
    """The keys of one paced-latency workload."""

    p50: str
    p99: str
    p999: str
    rate: str


PACED_LOW = Paced("lat_low_p50", "lat_low_p99", "lat_low_p999", "lat_low_rate")
PACED_HIGH = Paced("lat_2k_p50", "lat_2k_p99", "lat_2k_p999", "lat_2k_rate")


def kept_pace(achieved: float, pace: float) -> bool:
    return achieved >= PACE_KEPT * pace


METRICS: list[Metric] = [
    Metric("tp_100", "Throughput, 100 B messages", "msg/s", True),
    Metric("tp_10k", "Throughput, 10 KB messages", "msg/s", True),
    Metric("tp_many", "Throughput, 2 producers x 8 coroutines, 2 consumers, 100 B", "msg/s", True),
    Metric("lat_low_p50", "Latency, paced {low} msg/s, p50", "ms", False),
    Metric("lat_low_p99", "Latency, paced {low} msg/s, p99", "ms", False),
    Metric("lat_low_p999", "Latency, paced {low} msg/s, p99.9", "ms", False),
    Metric("lat_low_rate", "Latency, paced {low} msg/s, rate achieved", "msg/s", True, False),
    Metric("lat_2k_p50", "Latency, paced {high} msg/s, p50", "ms", False),
    Metric("lat_2k_p99", "Latency, paced {high} msg/s, p99", "ms", False),
    Metric("lat_2k_p999", "Latency, paced {high} msg/s, p99.9", "ms", False),
    Metric("lat_2k_rate", "Latency, paced {high} msg/s, rate achieved", "msg/s", True, False),
    Metric("lat_sat_p50", "Latency, saturated, p50", "ms", False),
    Metric("lat_sat_p99", "Latency, saturated, p99", "ms", False),
    Metric("lat_sat_p999", "Latency, saturated, p99.9", "ms", False),
    Metric("fan_10", "group_send to 10 members", "ms", False),
    Metric("fan_100", "group_send to 100 members", "ms", False),
    Metric("fan_1000", "group_send to 1,000 members", "ms", False),
    Metric("idle_client", "100 idle consumers: client CPU", "% of a core", False),
    Metric("idle_server", "100 idle consumers: server CPU", "% of a core", False),
    Metric("idle_total", "100 idle consumers: client + server CPU", "% of a core", False),
]
BY_KEY = {m.key: m for m in METRICS}

# The targets of issue 4: (metric, peer, bound on chanlite / peer, description).
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("tp_100", "channels_redis", ">=", 2.0, "throughput 100 B ≥ 2× channels_redis"),
    ("tp_10k", "channels_redis", ">=", 2.0, "throughput 10 KB ≥ 2× channels_redis"),
    ("tp_100", "channels-lite ORM", ">=", 10.0, "throughput 100 B ≥ 10× channels-lite ORM"),
    ("tp_100", "channels-lite AIO", ">=", 10.0, "throughput 100 B ≥ 10× channels-lite AIO"),
    ("tp_10k", "channels-lite ORM", ">=", 10.0, "throughput 10 KB ≥ 10× channels-lite ORM"),
    ("tp_10k", "channels-lite AIO", ">=", 10.0, "throughput 10 KB ≥ 10× channels-lite AIO"),
    ("lat_low_p50", "channels_redis", "<=", 0.5, "paced latency p50 ≤ 0.5× channels_redis"),
    ("lat_low_p99", "channels_redis", "<=", 1.0, "paced latency p99 ≤ channels_redis"),
    ("lat_sat_p50", "channels_redis", "<=", 0.5, "saturated latency p50 ≤ 0.5× channels_redis"),
    ("lat_sat_p99", "channels_redis", "<=", 1.0, "saturated latency p99 ≤ channels_redis"),
    (
        "fan_1000",
        "channels_redis",
        "<=",
        1.0,
        "group_send to 1,000: as fast as channels_redis (time ≤ 1×)",
    ),
    (
        "fan_1000",
        "channels-lite ORM",
        "<=",
        0.2,
        "group_send to 1,000: ≥ 5× channels-lite ORM (time ≤ 0.2×)",
    ),
    (
        "fan_1000",
        "channels-lite AIO",
        "<=",
        0.2,
        "group_send to 1,000: ≥ 5× channels-lite AIO (time ≤ 0.2×)",
    ),
]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Results:
    layers: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    in_process: set[str] = field(default_factory=set)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    stopped: str | None = None
    floor_output: str | None = None
    floor_info: str = ""
    paces: tuple[float, float] = (200.0, 2000.0)  # the plan's lat_rate and lat_rate_high

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        """The results of a run as its results.json holds them (also one from before a
        workload or a field existed: what it lacks is simply not measured)."""
        plan = data.get("meta", {}).get("plan", {})
        results = cls(
            layers=list(data.get("layers") or _layer_order(data)),
            unavailable=dict(data.get("unavailable") or {}),
            in_process=set(data.get("in_process") or ()),
            samples={k: dict(v) for k, v in (data.get("samples") or {}).items()},
            failed={k: dict(v) for k, v in (data.get("failed") or {}).items()},
            notes={k: dict(v) for k, v in (data.get("notes") or {}).items()},
            stopped=data.get("stopped"),
            floor_output=(data.get("floor") or {}).get("output"),
            floor_info=(data.get("floor") or {}).get("info", ""),
            paces=(float(plan.get("lat_rate", 200.0)), float(plan.get("lat_rate_high", 2000.0))),
        )
        return results

    def label(self, metric: Metric) -> str:
        low, high = self.paces
        return metric.label.format(low=f"{low:,.0f}", high=f"{high:,.0f}")

    def behind(self, key: str, layer: str) -> tuple[float, float] | None:
        """(achieved, pace) if `key` is a paced latency whose layer did not keep the pace
        (by its median achieved rate): its percentiles then include a backlog."""
        for paced, pace in zip((PACED_LOW, PACED_HIGH), self.paces, strict=True):
            if key in (paced.p50, paced.p99, paced.p999):
                achieved = self.stat(paced.rate, layer)
                if achieved is not None and not kept_pace(achieved[0], pace):
                    return achieved[0], pace
        return None

    def add(self, key: str, layer: str, value: float) -> None:
        self.samples.setdefault(key, {}).setdefault(layer, []).append(float(value))

    def fail(self, key: str, layer: str, reason: str) -> None:
        self.failed.setdefault(key, {}).setdefault(layer, reason)

    def note(self, key: str, layer: str, text: str, run: int | None = None) -> None:
        """Remember `text` about a figure; the same text from several runs is shown once."""
        texts = self.notes.setdefault(key, {}).setdefault(layer, [])
        for i, known in enumerate(texts):
            head, sep, rest = known.partition(": ")
            if run is not None and sep and head.startswith("run") and rest == text:
                texts[i] = f"runs {head.removeprefix('runs ').removeprefix('run ')}, {run}: {text}"
                return
        texts.append(f"run {run}: {text}" if run is not None else text)

    def stat(self, key: str, layer: str) -> tuple[float, float, float, int] | None:
        values = self.samples.get(key, {}).get(layer)
        if not values:
            return None
        return median(values), min(values), max(values), len(values)

    def why_missing(self, key: str, layer: str) -> str:
        if layer in self.unavailable:
            return self.unavailable[layer]
        if layer in self.failed.get(key, {}):
            return self.failed[key][layer]
        if key == "idle_server" and layer not in self.samples.get("idle_total", {}):
            return "not measured"
        if key == "idle_server":
            return "no server"
        return "not measured" + (f" ({self.stopped})" if self.stopped else "")


def _layer_order(data: dict[str, Any]) -> list[str]:
    """The columns of a results.json written before it named them: every layer it mentions,
    in the order the harness runs them."""
    seen: dict[str, None] = {}
    for per_layer in (data.get("samples") or {}).values():
        seen.update(dict.fromkeys(per_layer))
    for section in ("failed", "notes"):
        for per_layer in (data.get(section) or {}).values():
            seen.update(dict.fromkeys(per_layer))
    seen.update(dict.fromkeys(data.get("unavailable") or {}))
    try:
        import layers

        order = [name for name, _ in layers.FACTORIES]
    except ImportError:
        return list(seen)
    return sorted(seen, key=lambda name: order.index(name) if name in order else len(order))


def fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _short(reason: str, limit: int = 70) -> str:
    reason = reason.replace("|", "/").replace("\n", " ")
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def cell(results: Results, key: str, layer: str) -> str:
    stat = results.stat(key, layer)
    if stat is None:
        reason = results.why_missing(key, layer)
        return "—" if reason == "no server" else f"n/a ({_short(reason)})"
    mid, lo, hi, n = stat
    text = fmt(mid) if n == 1 else f"{fmt(mid)} ({fmt(lo)}–{fmt(hi)})"
    if results.notes.get(key, {}).get(layer):
        text += " †"
    if results.behind(key, layer):
        text += " ‡"
    return text


def _label(results: Results, key: str) -> str:
    return results.label(BY_KEY[key]) if key in BY_KEY else key


def header(results: Results, layer: str) -> str:
    return f"{layer} (in-process)" if layer in results.in_process else layer


def ratio(results: Results, key: str, peer: str) -> float | None:
    mine, theirs = results.stat(key, SUBJECT), results.stat(key, peer)
    if mine is None or theirs is None or theirs[0] == 0:
        return None
    return mine[0] / theirs[0]


def ratio_rows(results: Results) -> list[tuple[str, str, str, str]]:
    """(metric, peer, ratio text, verdict) for every metric and peer with both figures."""
    rows = []
    for metric in METRICS:
        if not metric.compared:
            continue
        for peer in results.layers:
            if peer == SUBJECT:
                continue
            value = ratio(results, metric.key, peer)
            if value is None:
                continue
            better = value > 1 if metric.higher_is_better else value < 1
            factor = max(value, 1 / value) if value > 0 else float("inf")
            verdict = f"chanlite {'better' if better else 'worse'} by {factor:.2f}×"
            if abs(value - 1) < 0.005:
                verdict = "equal"
            rows.append((results.label(metric), peer, f"{value:.3g}", verdict))
    return rows


def target_rows(results: Results) -> list[tuple[str, str, str]]:
    rows = []
    for key, peer, op, bound, text in TARGETS:
        value = ratio(results, key, peer)
        if value is None:
            rows.append((text, "n/a", "not measured"))
            continue
        ok = value >= bound if op == ">=" else value <= bound
        rows.append((text, f"{value:.3g}", "met" if ok else "MISSED"))
    idle = results.stat("idle_client", SUBJECT)
    if idle is None:
        rows.append(("idle consumers < 1% of a core", "n/a", "not measured"))
    else:
        rows.append(
            (
                "idle consumers < 1% of a core",
                f"{idle[0]:.3g} %",
                "met" if idle[0] < 1 else "MISSED",
            )
        )
    return rows


@dataclass(frozen=True)
class Target:
    """One target of issue 11: chanlite's figure of `key` (or, with `peer`, chanlite ÷ peer)
    `op` `bound`."""

    text: str
    key: str
    op: str  # "<=", "<" or ">="
    bound: float
    peer: str | None = None


def issue11_targets(results: Results) -> list[Target]:
    targets = []
    for paced, pace in zip((PACED_LOW, PACED_HIGH), results.paces, strict=True):
        name = f"paced {pace:,.0f} msg/s"
        targets += [
            Target(f"{name}: p99 ≤ 0.5× {PEER}", paced.p99, "<=", 0.5, PEER),
            Target(f"{name}: chanlite p99 < 1 ms", paced.p99, "<", 1.0),
            Target(f"{name}: p99.9 ≤ 1× {PEER}", paced.p999, "<=", 1.0, PEER),
        ]
    return [
        *targets,
        Target("throughput 100 B ≥ 15,000 msg/s", "tp_100", ">=", 15000.0),
        Target(f"throughput 100 B ≥ 10× {PEER}", "tp_100", ">=", 10.0, PEER),
        Target("throughput 10 KB ≥ 8,000 msg/s", "tp_10k", ">=", 8000.0),
        Target("many producers ≥ 25,000 msg/s", "tp_many", ">=", 25000.0),
        Target(f"group_send to 1,000 members: time ≤ 0.5× {PEER}", "fan_1000", "<=", 0.5, PEER),
        Target("saturated latency p50 ≤ 1 ms", "lat_sat_p50", "<=", 1.0),
        Target(
            f"100 idle consumers: client + server CPU ≤ {IDLE_BEFORE_ISSUE11:g} % of a core "
            "(before issue 11)",
            "idle_total",
            "<=",
            IDLE_BEFORE_ISSUE11,
        ),
    ]


def _meets(value: float, op: str, bound: float) -> bool:
    return value < bound if op == "<" else value <= bound if op == "<=" else value >= bound


def _shortfall(value: float, op: str, bound: float) -> float:
    """How many times too high (a bound from above) or too low (from below) `value` is."""
    if op == ">=":
        return bound / value if value > 0 else float("inf")
    return value / bound


def _fine(value: float) -> str:
    """`fmt`, with three significant digits below 1 (idle CPU is a few thousandths)."""
    return fmt(value) if abs(value) >= 1 else f"{value:.3g}"


def issue11_rows(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 11."""
    rows = []
    for target in issue11_targets(results):
        unit = BY_KEY[target.key].unit
        mine = results.stat(target.key, SUBJECT)
        theirs = results.stat(target.key, target.peer) if target.peer else None
        if mine is None or (target.peer and theirs is None):
            who = SUBJECT if mine is None else target.peer
            rows.append((target.text, "n/a", f"not measured ({who} has no figure)"))
            continue
        if theirs is not None:
            value = mine[0] / theirs[0] if theirs[0] else float("inf")
            measured = f"{value:.3g}× ({_fine(mine[0])} ÷ {_fine(theirs[0])} {unit})"
        else:
            value = mine[0]
            measured = f"{_fine(value)} {unit}"
            if target.key == "tp_many":
                versus = ratio(results, target.key, PEER)
                measured += f" ({versus:.3g}× {PEER})" if versus else f" ({PEER}: n/a)"
        if _meets(value, target.op, target.bound):
            verdict = "met"
        else:
            factor = _shortfall(value, target.op, target.bound)
            by = f"{factor:.2f}×" if factor != float("inf") else "everything"
            if theirs is None:
                by = f"{_fine(abs(value - target.bound))} {unit}" + (
                    f" ({factor:.2f}×)" if factor != float("inf") else ""
                )
            verdict = f"MISSED by {by}"
        if behind := results.behind(target.key, SUBJECT):
            verdict = (
                f"MISSED: chanlite kept {behind[0]:,.0f} of {behind[1]:,.0f} msg/s, so its "
                "percentiles include a backlog"
            )
        elif target.peer and (behind := results.behind(target.key, target.peer)):
            verdict += (
                f"; {target.peer} kept only {behind[0]:,.0f} of {behind[1]:,.0f} msg/s, so its "
                "percentiles include a backlog"
            )
        rows.append((target.text, measured, verdict))
    return rows


def find_cluster(out: Path) -> Path | None:
    """The cluster benchmark's results: next to this run's, else the repository's."""
    for candidate in (out / "cluster.json", RESULTS_DIR / "cluster.json"):
        if candidate.is_file():
            return candidate
    return None


def _cluster_date(path: Path) -> str:
    """When bench/cluster/run.py wrote `path`: the date it put in the cluster.md it wrote
    beside it, else the file's last commit."""
    try:
        found = re.search(
            r"`bench/cluster/run\.py[^`]*`, (\d{4}-\d{2}-\d{2})",
            path.with_name("cluster.md").read_text(),
        )
    except OSError:
        found = None
    if found:
        return found.group(1)
    try:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "date unknown"
    return f"committed {done.stdout.strip()}" if done.stdout.strip() else "date unknown"


def cluster_section(path: Path) -> list[str]:
    """RESULTS.md's quote of bench/cluster/run.py's last results (cluster.json)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return ["", "## The cluster (bench/cluster/run.py)", "", f"n/a: {path}: {exc}", ""]
    try:
        shown = path.resolve().relative_to(RESULTS_DIR.parent.parent)
    except ValueError:
        shown = path

    def num(row: dict[str, Any], field: str, suffix: str = "") -> str:
        value = row.get(field)
        return f"{fmt(float(value))}{suffix}" if isinstance(value, int | float) else "n/a"

    lines = [
        "",
        "## The cluster (bench/cluster/run.py)",
        "",
        f"Quoted from `{shown}` ({_cluster_date(path)}), written by `bench/cluster/run.py`, not "
        "by this harness: the cluster's client (dqlite-client) needs Python ≥ 3.13, while this "
        "harness runs every peer on the system Python 3.11 at the versions it pins. That run "
        "has its own run lengths, pace and idle set-up (see its docstring and cluster.md), so "
        "compare its rows with each other, not with the table above.",
        "",
        "| layer | throughput ↑ (msg/s) | paced p50 ↓ (ms) | paced p99 ↓ (ms) "
        "| idle client CPU ↓ (% of a core) | idle server CPU ↓ (% of a core) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in data.items():
        if name == "failover" or not isinstance(row, dict):
            continue
        lines.append(
            f"| {name} | {num(row, 'throughput')} | {num(row, 'paced_p50_ms')} "
            f"| {num(row, 'paced_p99_ms')} | {num(row, 'client_cpu_pct')} "
            f"| {num(row, 'server_cpu_pct')} |"
        )
    failover = data.get("failover")
    if isinstance(failover, dict) and "max_latency_s" in failover:
        lines += [
            "",
            f"Failover (the leader killed under paced sends): the slowest message took "
            f"{num(failover, 'max_latency_s')} s; {failover.get('acknowledged', 'n/a')} sends "
            f"acknowledged, {failover.get('received', 'n/a')} received.",
        ]
    lines.append("")
    return lines


def markdown(results: Results, meta: dict[str, Any], cluster: Path | None = None) -> str:
    plan = meta["plan"]
    lines = [
        "# chanlite beside its peers",
        "",
        f"One run of `python3 bench/peers/run.py{' --quick' if meta['mode'] == 'quick' else ''}`"
        f" on {meta['date']}, {meta['cpus']} CPUs, {meta['duration_min']} min.",
        f"Load before: `{meta['load_before']}`; after: `{meta['load_after']}`.",
        "",
        "Each figure is the median of the runs, with the spread (min–max) in brackets; "
        f"{plan['runs']} runs for throughput and latency, {plan['fan_runs']} for fan-out "
        f"(each the median of {plan['fan_rounds']} rounds), {plan['idle_runs']} for idle CPU. "
        "† marks a figure with a note below.",
        "",
    ]
    if results.stopped:
        lines += [f"**The run stopped early: {results.stopped}.**", ""]
    cols = results.layers
    lines.append("| workload | unit | " + " | ".join(header(results, c) for c in cols) + " |")
    lines.append("|---|---|" + "---:|" * len(cols))
    for metric in METRICS:
        label = results.label(metric)
        arrow = "↑" if metric.higher_is_better else "↓"
        lines.append(
            f"| {label} {arrow} | {metric.unit} | "
            + " | ".join(cell(results, metric.key, c) for c in cols)
            + " |"
        )
    lines += [
        "",
        "↑ higher is better, ↓ lower is better. "
        "Throughput: one producer and one consumer process, the producer keeping at most 100 "
        f"messages in flight, {plan['tp_seconds']:g} s per run; saturated latency comes from the "
        "same 100 B runs. Many producers: 2 producer processes × 8 coroutines sending at once "
        "to 2 consumer processes, at most 400 messages in flight. "
        f"Paced latency: the same two processes, 100 B at {results.paces[0]:,.0f} msg/s and at "
        f"{results.paces[1]:,.0f} msg/s, {plan['lat_seconds']:g} s per run; the rate achieved is "
        "the lower of the producer's sending rate and the consumer's receiving rate (first to "
        f"last message), and ‡ marks the percentiles of a layer whose rate fell below "
        f"{PACE_KEPT:.0%} of the pace: they include the backlog it built. "
        "Fan-out: members spread over 4 consumer processes, time "
        "from group_send() until the last member's receive() returned. Idle: 100 consumers "
        f"(4 processes × 25) blocked in receive() for {plan['idle_seconds']:g} s; server CPU is "
        "redis-server's or PostgreSQL's (all its processes). InMemory runs every workload "
        "inside one process.",
        "",
        "## chanlite ÷ peer",
        "",
        "| workload | peer | chanlite ÷ peer | verdict |",
        "|---|---|---:|---|",
    ]
    for label, peer, value, verdict in ratio_rows(results):
        lines.append(f"| {label} | {peer} | {value} | {verdict} |")
    lines += ["", "## Targets (issue 4)", "", "| target | chanlite ÷ peer | |", "|---|---:|---|"]
    for text, value, verdict in target_rows(results):
        lines.append(f"| {text} | {value} | {verdict} |")
    lines += [
        "",
        "## Issue 11 targets",
        "",
        f"Computed from this run: chanlite's figure, or chanlite ÷ {PEER} (both medians).",
        "",
        "| target | measured | verdict |",
        "|---|---:|---|",
    ]
    for text, value, verdict in issue11_rows(results):
        lines.append(f"| {text} | {value} | {verdict} |")
    lines += cluster_section(cluster) if cluster is not None else []
    lines += ["", "## C-level floor (bench_floor)", ""]
    if results.floor_output:
        # Its own headings go one level below this section's.
        floor = [
            "#" + line if line.startswith("#") else line
            for line in results.floor_output.strip().splitlines()
        ]
        lines += [f"`{results.floor_info}`:", "", *floor, ""]
    else:
        lines += [f"n/a: {results.floor_info}", ""]
    problems = []
    for layer, reason in results.unavailable.items():
        problems.append(f"- **{layer}**: n/a: {reason}")
    for key, per_layer in results.failed.items():
        for layer, reason in per_layer.items():
            if layer not in results.unavailable:
                problems.append(f"- **{layer}**, {_label(results, key)}: {reason}")
    for key, notes_of in results.notes.items():
        for layer, texts in notes_of.items():
            for text in texts:
                problems.append(f"- † **{layer}**, {_label(results, key)}: {text}")
    if problems:
        lines += ["## Failures and notes", "", *problems, ""]
    lines += ["## Versions", "", "| component | version |", "|---|---|"]
    lines += [f"| {name} | {version} |" for name, version in meta["versions"].items()]
    lines.append("")
    return "\n".join(lines)


def chart(results: Results, meta: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no chart: {exc}"
    panels: list[tuple[str, str, list[tuple[str, str]], bool]] = [
        (
            "Point-to-point throughput",
            "msg/s (log)",
            [("tp_100", "100 B"), ("tp_10k", "10 KB"), ("tp_many", "many\nproducers")],
            True,
        ),
        (
            "Latency, paced (hatched: fell behind the pace)",
            "ms (log)",
            [
                (key, f"{name}\n{pace:,.0f}/s")
                for paced, pace in zip((PACED_LOW, PACED_HIGH), results.paces, strict=True)
                for key, name in ((paced.p50, "p50"), (paced.p99, "p99"), (paced.p999, "p99.9"))
            ],
            True,
        ),
        (
            "Latency, saturated",
            "ms (log)",
            [("lat_sat_p50", "p50"), ("lat_sat_p99", "p99"), ("lat_sat_p999", "p99.9")],
            True,
        ),
        (
            "group_send: all members received",
            "ms (log)",
            [("fan_10", "10"), ("fan_100", "100"), ("fan_1000", "1,000")],
            True,
        ),
        (
            "100 idle consumers",
            "% of one core",
            [("idle_client", "clients"), ("idle_server", "server")],
            False,
        ),
    ]
    layers = results.layers
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, ylabel, series, log) in zip(axes.flat, panels, strict=False):
        width = 0.8 / max(1, len(layers))
        for li, layer in enumerate(layers):
            xs, ys, lo, hi, behind = [], [], [], [], []
            for si, (key, _) in enumerate(series):
                stat = results.stat(key, layer)
                if stat is None:
                    continue
                mid, vmin, vmax, _n = stat
                xs.append(si - 0.4 + width * (li + 0.5))
                ys.append(mid)
                lo.append(mid - vmin)
                hi.append(vmax - mid)
                behind.append(results.behind(key, layer) is not None)
            if xs:
                bars = ax.bar(
                    xs,
                    ys,
                    width,
                    yerr=[lo, hi],
                    capsize=2,
                    color=colors[li % len(colors)],
                    label=header(results, layer),
                    edgecolor="black" if layer == SUBJECT else None,
                    linewidth=1.5 if layer == SUBJECT else 0,
                )
                for bar, late in zip(bars.patches, behind, strict=True):
                    if late:
                        bar.set_hatch("///")
        ax.set_xticks(range(len(series)), [name for _, name in series])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat[:-1]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    legend_ax.legend(handles, labels, loc="upper left", title="layer", fontsize=11)
    missing = [
        f"{name}: n/a ({_short(reason, 60)})" for name, reason in results.unavailable.items()
    ]
    missing += [
        f"{layer}, {_label(results, key)}: n/a ({_short(reason, 50)})"
        for key, failed in results.failed.items()
        for layer, reason in failed.items()
        if layer not in results.unavailable and results.stat(key, layer) is None
    ]
    footer = (
        f"{meta['mode']} run, {meta['date']}, {meta['cpus']} CPUs; bars: median, whiskers: min–max"
    )
    legend_ax.text(
        0,
        0.02,
        "\n".join([*missing, footer]),
        fontsize=8,
        va="bottom",
        wrap=True,
        transform=legend_ax.transAxes,
    )
    fig.suptitle("chanlite beside its peers (one run, one machine)", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(results: Results, meta: dict[str, Any], out: Path) -> None:
    problem = chart(results, meta, out / "chart.png")
    text = markdown(results, meta, find_cluster(out))
    if problem is None:
        text = text.replace("## chanlite ÷ peer", "![chart](chart.png)\n\n## chanlite ÷ peer", 1)
    (out / "RESULTS.md").write_text(text)
    summary = {
        key: {
            layer: dict(zip(("median", "min", "max", "runs"), stat, strict=True))
            for layer in results.layers
            if (stat := results.stat(key, layer)) is not None
        }
        for key in BY_KEY
    }
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "layers": results.layers,
                "summary": summary,
                "samples": results.samples,
                "unavailable": results.unavailable,
                "failed": results.failed,
                "notes": results.notes,
                "in_process": sorted(results.in_process),
                "stopped": results.stopped,
                "ratios": [
                    dict(zip(("workload", "peer", "ratio", "verdict"), row, strict=True))
                    for row in ratio_rows(results)
                ],
                "floor": {"info": results.floor_info, "output": results.floor_output},
                "issue11_targets": [
                    dict(zip(("target", "measured", "verdict"), row, strict=True))
                    for row in issue11_rows(results)
                ],
            },
            indent=2,
            default=str,
        )
    )


def print_ratios(results: Results) -> None:
    print()
    if results.stat("tp_100", SUBJECT) is None and SUBJECT in results.unavailable:
        print(f"chanlite: n/a ({results.unavailable[SUBJECT]}): no ratios to print")
    rows = ratio_rows(results)
    if rows:
        print("chanlite ÷ peer (throughput: > 1 is better; times and CPU: < 1 is better)")
        width = max(len(r[0]) for r in rows)
        peer_w = max(len(r[1]) for r in rows)
        for label, peer, value, verdict in rows:
            print(f"  {label:<{width}}  {peer:<{peer_w}}  {value:>8}  {verdict}")
        print()
        print("targets (issue 4):")
        for text, value, verdict in target_rows(results):
            print(f"  {verdict:<12} {text}: {value}")
    if SUBJECT not in results.unavailable:
        print()
        print("Issue 11 targets:")
        for text, value, verdict in issue11_rows(results):
            print(f"  {text}: {value}: {verdict}")
    for name, reason in results.unavailable.items():
        print(f"  {name}: n/a ({reason})")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-render RESULTS.md and chart.png of a run.")
    parser.add_argument("results_json", type=Path, help="a run's results.json")
    parser.add_argument(
        "--out", type=Path, help="where to write (default: the directory of results_json)"
    )
    args = parser.parse_args(argv)
    data = json.loads(args.results_json.read_text())
    out: Path = args.out or args.results_json.parent
    out.mkdir(parents=True, exist_ok=True)
    results = Results.from_json(data)
    write(results, data["meta"], out)
    print_ratios(results)
    print(f"wrote {out / 'RESULTS.md'}, {out / 'chart.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
