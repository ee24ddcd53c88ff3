"""The ``chanlite`` admin command: look at and look after a chanlite database.

    chanlite status channels.sqlite3        channels, depths, ages; groups, sizes
    chanlite top channels.sqlite3           the same, refreshed (--once, --iterations)
    chanlite stats channels.sqlite3         messages sent, received, expired, dropped
    chanlite dead channels.sqlite3          dead letters, newest first
    chanlite health channels.sqlite3        the health checks (chanlite.health)
    chanlite trim channels.sqlite3          remove expired messages and memberships
    chanlite flush channels.sqlite3 --yes   empty every channel and group
    chanlite vacuum channels.sqlite3        give free pages back to the file system

``--json`` prints machine-readable JSON instead (``top``: one object a line).
Exit codes: 0 done (healthy); 1 ``health`` found warnings, or ``flush`` was
not confirmed; 2 an error (bad usage, no such database, a check in error).

The same commands run in a Django project as ``manage.py chanlite ...`` on
the configured channel layer's database (``chanlite.django`` in
INSTALLED_APPS).
"""

from __future__ import annotations

import argparse
import base64
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import chanlite
from chanlite import monitor
from chanlite.healthcheck import Status, Thresholds, health
from chanlite.monitor import format_age, format_size

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_WARNING", "add_commands", "main", "run"]

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2

COMMANDS = ("status", "top", "stats", "dead", "health", "trim", "flush", "vacuum")


class Output(Protocol):
    """Where a command writes: a text stream (sys.stdout, Django's wrapper)."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: ...


class Input(Protocol):
    """Where ``flush`` reads its confirmation."""

    def readline(self) -> str: ...
    def isatty(self) -> bool: ...


class Usage(Exception):
    """A bad option value found after parsing (exit code 2)."""


# ---- the parser ----


def add_commands(
    parser: argparse.ArgumentParser, add_target: Callable[[argparse.ArgumentParser], None]
) -> None:
    """The subcommands, on ``parser``; ``add_target`` adds to each how it
    names its database (a path argument, or Django's ``--layer``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the database's write lock (default 5)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        add_target(p)
        return p

    def limit(p: argparse.ArgumentParser, default: int, what: str) -> None:
        p.add_argument(
            "--limit",
            type=int,
            default=default,
            metavar="N",
            help=f"show at most N {what} (default {default}; 0: all)",
        )

    p = command("status", "channels with their depths and ages, groups with their sizes")
    limit(p, 20, "channels and groups")
    p = command("top", "the status, refreshed until interrupted, with rates")
    limit(p, 20, "channels")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    p.add_argument("--iterations", type=int, default=0, metavar="N", help="stop after N views")
    p.add_argument("--once", action="store_true", help="one view (as --iterations 1)")
    p = command("stats", "messages sent, received, expired and dropped, per channel")
    limit(p, 50, "channels")
    p = command("dead", "dead letters (expired unread, or dropped for a full channel)")
    limit(p, 20, "dead letters")
    p.add_argument("--channel", help="only this channel's")
    p = command("health", "the health checks: exit 0 ok, 1 warnings, 2 errors")
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a threshold, e.g. oldest_age_warning=10 (none: switch it off)",
    )
    command("trim", "remove expired messages and group memberships")
    p = command("flush", "remove every message and group membership")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    command(
        "vacuum",
        "give the database's free pages back to the file system and truncate the WAL",
    )


def _add_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("database", help="the chanlite database file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chanlite",
        description="Look at and look after a chanlite database.",
        epilog="Exit codes: 0 ok; 1 health warnings or flush not confirmed; 2 errors.",
    )
    parser.add_argument("--version", action="version", version=_package_version())
    add_commands(parser, _add_path)
    return parser


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return f"chanlite {version('chanlite')}"
    except Exception:
        return "chanlite (version unknown: not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """The console script."""
    args = build_parser().parse_args(argv)
    return run(args, args.database, sys.stdout, sys.stderr, sys.stdin)


# ---- running a command ----


def run(args: argparse.Namespace, database: str, out: Output, err: Output, stdin: Input) -> int:
    """Run the parsed command on ``database``; its exit code."""
    if args.command == "health":
        return _health(args, database, out, err)
    try:
        conn = monitor.open_database(database, timeout=args.timeout)
    except (OSError, sqlite3.Error, chanlite.ExtensionUnavailable) as e:
        _error(err, f"cannot open {database}: {str(e).removeprefix('chanlite: ')}")
        return EXIT_ERROR
    try:
        handler = _HANDLERS[args.command]
        return handler(args, conn, out, err, stdin)
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "top" else 130
    except Usage as e:
        _error(err, str(e))
        return EXIT_ERROR
    except (monitor.NotAvailable, sqlite3.Error) as e:
        _error(err, str(e))
        return EXIT_ERROR
    finally:
        conn.close()


def _error(err: Output, message: str) -> None:
    message = message if message.startswith("chanlite: ") else f"chanlite: {message}"
    err.write(message + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _print_json(out: Output, data: Any, *, indent: int | None = 2) -> None:
    out.write(json.dumps(data, indent=indent, default=_json_default) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int]) -> str:
    """Rows under headers in aligned columns; the columns in ``right`` (numbers)
    aligned right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---- status and top ----


def snapshot(conn: sqlite3.Connection) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data."""
    channels = monitor.channels(conn)
    groups = monitor.groups(conn)
    return {
        "database": monitor.database_file(conn),
        "version": conn.execute("SELECT chanlite_version()").fetchone()[0],
        "time": time.time(),
        "files": monitor.files(conn).to_dict(),
        "totals": {
            "channels": len(channels),
            "messages": sum(c.depth for c in channels),
            "groups": len(groups),
            "memberships": sum(g.members for g in groups),
        },
        "channels": [asdict(c) for c in channels],
        "groups": [asdict(g) for g in groups],
    }


def _limited(rows: list[Any], limit: int) -> list[Any]:
    return rows if limit <= 0 else rows[:limit]


def _section(what: str, headers: list[str], rows: list[list[Any]], limit: int) -> list[str]:
    """A blank line, then a table of the first ``limit`` rows (none if no rows)."""
    if not rows:
        return []
    shown = _limited(rows, limit)
    lines = ["", table(headers, shown, right={1, 2})]
    if len(shown) < len(rows):
        lines.append(f"... and {len(rows) - len(shown)} more {what} (--limit 0: all)")
    return lines


def _status_text(snap: dict[str, Any], limit: int, rates: dict[str, float] | None) -> str:
    f = snap["files"]
    t = snap["totals"]
    lines = [
        f"chanlite {snap['version']}  {snap['database']}",
        f"file {format_size(f['file_size'])}  WAL {format_size(f['wal_size'])}  "
        f"free pages {f['free_pages']} of {f['page_count']}  "
        f"journal {f['journal_mode']}  auto_vacuum {f['auto_vacuum']}",
        f"{_plural(t['messages'], 'message')} in {_plural(t['channels'], 'channel')}; "
        f"{_plural(t['groups'], 'group')} with {_plural(t['memberships'], 'membership')}",
    ]
    if rates is not None:
        lines.append(
            f"sent {rates['sent']:.1f}/s  received {rates['received']:.1f}/s  "
            f"expired {rates['expired']:.1f}/s  dropped {rates['dropped']:.1f}/s"
        )
    lines += _section(
        "channels",
        ["CHANNEL", "DEPTH", "OLDEST"],
        [[c["channel"], c["depth"], format_age(c["oldest_age"])] for c in snap["channels"]],
        limit,
    )
    lines += _section(
        "groups",
        ["GROUP", "MEMBERS", "NEXT EXPIRY"],
        [[g["group"], g["members"], format_age(g["next_expiry"])] for g in snap["groups"]],
        limit,
    )
    return "\n".join(lines) + "\n"


def _status(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    snap = snapshot(conn)
    if args.json:
        snap["channels"] = _limited(snap["channels"], args.limit)
        snap["groups"] = _limited(snap["groups"], args.limit)
        _print_json(out, snap)
    else:
        out.write(_status_text(snap, args.limit, None))
    return EXIT_OK


def _totals(conn: sqlite3.Connection) -> monitor.ChannelStats | None:
    try:
        rows = monitor.stats(conn)
    except monitor.NotAvailable:
        return None
    return next((r for r in rows if r.channel is None), None)


_CLEAR = "\x1b[H\x1b[2J"


def _top(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    iterations = 1 if args.once else args.iterations
    if args.interval <= 0:
        raise Usage("--interval must be positive")
    redraw = not args.json and out.isatty()
    before: tuple[float, monitor.ChannelStats] | None = None
    n = 0
    while True:
        snap = snapshot(conn)
        totals = _totals(conn)
        rates = None
        if totals is not None and before is not None:
            elapsed = max(snap["time"] - before[0], 1e-9)
            old = before[1]
            rates = {
                "sent": (totals.sent - old.sent) / elapsed,
                "received": (totals.received - old.received) / elapsed,
                "expired": (totals.expired - old.expired) / elapsed,
                "dropped": (
                    totals.full_send + totals.full_group_send - old.full_send - old.full_group_send
                )
                / elapsed,
            }
        if totals is not None:
            before = (snap["time"], totals)
        if args.json:
            snap["channels"] = _limited(snap["channels"], args.limit)
            snap["groups"] = _limited(snap["groups"], args.limit)
            snap["rates"] = rates
            _print_json(out, snap, indent=None)
        else:
            text = _status_text(snap, args.limit, rates)
            stamp = time.strftime("%H:%M:%S", time.localtime(snap["time"]))
            header = f"chanlite top - {stamp}, every {args.interval:g}s (Ctrl-C to quit)\n"
            out.write((_CLEAR if redraw else ("" if n == 0 else "\n")) + header + text)
        out.flush()
        n += 1
        if iterations and n >= iterations:
            return EXIT_OK
        time.sleep(args.interval)


# ---- stats and dead letters ----


def _stats(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    rows = monitor.stats(conn)
    per_channel = [r for r in rows if r.channel is not None]
    per_channel.sort(key=lambda r: (-r.sent, r.channel or ""))
    shown = _limited(per_channel, args.limit)
    totals = next((r for r in rows if r.channel is None), None)
    if args.json:
        _print_json(
            out,
            {
                "channels": [asdict(r) for r in shown],
                "totals": None if totals is None else asdict(totals),
            },
        )
        return EXIT_OK

    def line(r: monitor.ChannelStats, name: str) -> list[Any]:
        return [
            name,
            r.sent,
            r.received,
            r.expired,
            r.full_send,
            r.full_group_send,
            r.depth,
            format_age(r.oldest_age),
        ]

    body = [line(r, r.channel or "") for r in shown]
    if totals is not None:
        body.append(line(totals, "(total)"))
    out.write(
        table(
            ["CHANNEL", "SENT", "RECEIVED", "EXPIRED", "FULL", "FULL(GROUP)", "DEPTH", "OLDEST"],
            body,
            right=set(range(1, 8)),
        )
        + "\n"
    )
    if len(shown) < len(per_channel):
        out.write(f"... and {len(per_channel) - len(shown)} more channels (--limit 0: all)\n")
    return EXIT_OK


def _decode(body: bytes | str) -> Any:
    """A dead letter's message as the layer sent it (msgpack), else None."""
    if isinstance(body, str):
        return body
    try:
        import msgpack

        return msgpack.unpackb(body, raw=False)
    except Exception:
        return None


def _preview(body: bytes | str, width: int = 60) -> str:
    message = _decode(body)
    text = repr(message) if message is not None else f"<{len(body)} bytes>"
    return text if len(text) <= width else text[: width - 3] + "..."


def _dead(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    letters = monitor.dead_letters(conn, limit=args.limit, channel=args.channel)
    if args.json:
        _print_json(
            out,
            [
                {
                    "id": d.id,
                    "channel": d.channel,
                    "reason": d.reason,
                    "sent_at": d.sent_at,
                    "dead_at": d.dead_at,
                    "size": len(d.body),
                    "message": _decode(d.body),
                    "body": d.body,  # TEXT as is, BLOB in base64
                }
                for d in letters
            ],
        )
        return EXIT_OK
    if not letters:
        kept = monitor.dead_letters_kept(conn)
        if kept == 0:
            out.write(
                "no dead letters: keeping them is off "
                "(SELECT chanlite_config('dead_letters', 1000) keeps the newest 1000)\n"
            )
        else:
            out.write("no dead letters\n")
        return EXIT_OK
    now = time.time()
    out.write(
        table(
            ["ID", "CHANNEL", "REASON", "SENT", "DIED", "SIZE", "MESSAGE"],
            [
                [
                    d.id,
                    d.channel,
                    d.reason,
                    format_age(now - d.sent_at) + " ago",
                    format_age(now - d.dead_at) + " ago",
                    format_size(len(d.body)),
                    _preview(d.body),
                ]
                for d in letters
            ],
            right={0, 3, 4, 5},
        )
        + "\n"
    )
    return EXIT_OK


# ---- health ----


def _threshold_value(text: str) -> float | None:
    if text.lower() in ("none", "off", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise Usage(f"threshold value {text!r} is not a number (or 'none')") from None


def _thresholds(pairs: list[str]) -> Thresholds:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise Usage(f"--threshold {pair!r}: expected NAME=VALUE")
        values[name.strip()] = _threshold_value(value.strip())
    try:
        return Thresholds.from_mapping(values)
    except ValueError as e:
        raise Usage(str(e)) from e


def _health(args: argparse.Namespace, database: str, out: Output, err: Output) -> int:
    try:
        thresholds = _thresholds(args.threshold)
    except Usage as e:
        _error(err, str(e))
        return EXIT_ERROR
    report = health(database, thresholds=thresholds, timeout=args.timeout)
    if args.json:
        _print_json(out, report.to_dict())
    else:
        out.write(f"{report.database}: {report.status.value.upper()}\n")
        out.write(
            table(
                ["STATUS", "CHECK", "SUMMARY"],
                [[c.status.value, c.name, c.summary] for c in report.checks],
                right=set(),
            )
            + "\n"
        )
    return {Status.OK: EXIT_OK, Status.WARNING: EXIT_WARNING, Status.ERROR: EXIT_ERROR}[
        report.status
    ]


# ---- changes ----


def _trim(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    removed = int(conn.execute("SELECT channel_trim()").fetchone()[0])
    if args.json:
        _print_json(out, {"removed": removed})
    else:
        out.write(f"trimmed: removed {removed} expired messages and group memberships\n")
    return EXIT_OK


def _flush(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    if not args.yes:
        totals = snapshot(conn)["totals"]
        out.write(
            f"Remove {_plural(totals['messages'], 'message')} in "
            f"{_plural(totals['channels'], 'channel')} and "
            f"{_plural(totals['memberships'], 'group membership')} from "
            f"{monitor.database_file(conn)}? [y/N] "
        )
        out.flush()
        answer = stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            # A typed answer ended its line on the terminal; piped input did not.
            out.write("not flushed\n" if answer and stdin.isatty() else "\nnot flushed\n")
            return EXIT_WARNING
    removed = int(conn.execute("SELECT channel_flush()").fetchone()[0])
    if args.json:
        _print_json(out, {"removed": removed})
    else:
        out.write(f"flushed: removed {removed} rows (messages and memberships)\n")
    return EXIT_OK


def _sizes(conn: sqlite3.Connection) -> dict[str, Any]:
    f = monitor.files(conn)
    return {
        "file_size": f.file_size,
        "wal_size": f.wal_size,
        "free_pages": f.free_pages,
        "page_count": f.page_count,
        "auto_vacuum": f.auto_vacuum,
    }


def _describe(sizes: dict[str, Any]) -> str:
    return (
        f"file {format_size(sizes['file_size'])}, WAL {format_size(sizes['wal_size'])}, "
        f"{sizes['free_pages']} free of {sizes['page_count']} pages, "
        f"auto_vacuum {sizes['auto_vacuum']}"
    )


def _vacuum(
    args: argparse.Namespace, conn: sqlite3.Connection, out: Output, err: Output, stdin: Input
) -> int:
    before = _sizes(conn)
    ran = []
    if before["auto_vacuum"] != "incremental":
        # Switching a database to incremental auto-vacuum takes effect only
        # through a VACUUM, which rewrites the whole file once; afterwards
        # free pages can be returned a few at a time without one.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        ran += ["PRAGMA auto_vacuum = INCREMENTAL", "VACUUM"]
    else:
        # Each step of incremental_vacuum frees one page, and Connection.execute
        # steps a statement that returns no columns only once; executescript
        # steps it to the end.
        conn.executescript("PRAGMA incremental_vacuum")
        ran.append("PRAGMA incremental_vacuum")
    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    ran.append("PRAGMA wal_checkpoint(TRUNCATE)")
    after = _sizes(conn)
    complete = busy == 0
    if args.json:
        _print_json(
            out, {"before": before, "after": after, "ran": ran, "checkpoint_complete": complete}
        )
    else:
        out.write(f"before: {_describe(before)}\n")
        out.write(f"ran:    {'; '.join(ran)}\n")
        out.write(f"after:  {_describe(after)}\n")
        if not complete:
            out.write(
                "the checkpoint could not finish (other connections are reading): "
                "the WAL is truncated by a later checkpoint\n"
            )
    return EXIT_OK


_Handler = Callable[[argparse.Namespace, sqlite3.Connection, Output, Output, Input], int]
_HANDLERS: dict[str, _Handler] = {
    "status": _status,
    "top": _top,
    "stats": _stats,
    "dead": _dead,
    "trim": _trim,
    "flush": _flush,
    "vacuum": _vacuum,
}


if __name__ == "__main__":
    sys.exit(main())
