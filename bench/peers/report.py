"""Turn the samples of a run into RESULTS.md, results.json, chart.png and printed ratios."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBJECT = "chanlite"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS: list[Metric] = [
    Metric("tp_100", "Throughput, 100 B messages", "msg/s", True),
    Metric("tp_10k", "Throughput, 10 KB messages", "msg/s", True),
    Metric("tp_many", "Throughput, 2 producers x 8 coroutines, 2 consumers, 100 B", "msg/s", True),
    Metric("lat_low_p50", "Latency, paced, p50", "ms", False),
    Metric("lat_low_p99", "Latency, paced, p99", "ms", False),
    Metric("lat_low_p999", "Latency, paced, p99.9", "ms", False),
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
    return text


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
            rows.append((metric.label, peer, f"{value:.3g}", verdict))
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


def markdown(results: Results, meta: dict[str, Any]) -> str:
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
        if metric.key.startswith("lat_low"):
            label = metric.label.replace("paced", f"paced {plan['lat_rate']:.0f} msg/s")
        else:
            label = metric.label
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
        f"Paced latency: {plan['lat_rate']:.0f} msg/s for "
        f"{plan['lat_seconds']:g} s. Fan-out: members spread over 4 consumer processes, time "
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
                problems.append(f"- **{layer}**, {BY_KEY[key].label}: {reason}")
    for key, notes_of in results.notes.items():
        for layer, texts in notes_of.items():
            for text in texts:
                problems.append(f"- † **{layer}**, {BY_KEY[key].label}: {text}")
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
            [("tp_100", "100 B"), ("tp_10k", "10 KB")],
            True,
        ),
        (
            f"Latency, paced {meta['plan']['lat_rate']:.0f} msg/s",
            "ms (log)",
            [("lat_low_p50", "p50"), ("lat_low_p99", "p99"), ("lat_low_p999", "p99.9")],
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
            xs, ys, lo, hi = [], [], [], []
            for si, (key, _) in enumerate(series):
                stat = results.stat(key, layer)
                if stat is None:
                    continue
                mid, vmin, vmax, _n = stat
                xs.append(si - 0.4 + width * (li + 0.5))
                ys.append(mid)
                lo.append(mid - vmin)
                hi.append(vmax - mid)
            if xs:
                ax.bar(
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
        f"{layer}, {BY_KEY[key].label}: n/a ({_short(reason, 50)})"
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
    text = markdown(results, meta)
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
    for name, reason in results.unavailable.items():
        print(f"  {name}: n/a ({reason})")
    print()
