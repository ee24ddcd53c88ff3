"""The servers the peers need: a redis-server and a PostgreSQL, each a child of this process.

Both listen on 127.0.0.1 only, on a free port, keep their files under the run's temporary
directory, die with this process (PR_SET_PDEATHSIG, so even a killed harness leaves nothing
behind) and are stopped by ``stop()`` in the harness's ``finally``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child after any setuid (which would clear the setting), before exec.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class Server:
    """A server process started by this harness."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], stop_signal: int) -> None:
        self.name = name
        self.proc = proc
        self.stop_signal = stop_signal

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def _wait_until(
    check: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    log: Path,
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s: {_tail(log)}")


def _tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- redis ------------------------------------------------------------------------------------


def find_redis() -> str | None:
    return shutil.which("redis-server")


def start_redis(tmp: Path) -> tuple[Server, str]:
    exe = find_redis()
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp / "redis"
    workdir.mkdir()
    log = workdir / "redis.log"
    cmd = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(log),
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent(signal.SIGTERM),
    )
    server = Server("redis-server", proc, signal.SIGTERM)

    def ping() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        _wait_until(ping, proc, "redis-server", log)
    except BaseException:
        server.stop()
        raise
    return server, f"redis://127.0.0.1:{port}"


def redis_version() -> str:
    exe = find_redis()
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip()


# --- PostgreSQL -------------------------------------------------------------------------------


def find_pg_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: pick the account to run it as (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no postgres or nobody account")


def start_postgres(tmp: Path) -> tuple[Server, dict[str, Any]]:
    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    user = _pg_user()
    root = tmp / "pg"
    root.mkdir()
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chmod(tmp, 0o755)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        log.touch()
        os.chown(log, entry.pw_uid, entry.pw_gid)
    as_user: dict[str, Any] = {"user": user} if user is not None else {}
    with log.open("ab") as out:
        done = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "bench",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            timeout=120,
            check=False,
            **as_user,
        )
    if done.returncode != 0:
        raise RuntimeError(f"initdb exited {done.returncode}: {_tail(log)}")
    port = free_port()
    # synchronous_commit=off: a commit does not wait for its WAL flush, like SQLite's WAL with
    # synchronous=NORMAL that the SQLite layers use (redis runs with no persistence at all).
    cmd = [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(sockets),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "max_connections=300",
        "-c",
        "synchronous_commit=off",
        "-c",
        "shared_buffers=128MB",
    ]
    out_f = log.open("ab")
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out_f,
            stderr=out_f,
            cwd=root,
            preexec_fn=_die_with_parent(signal.SIGINT),
            **as_user,
        )
    finally:
        out_f.close()
    # SIGINT is PostgreSQL's "fast shutdown": it disconnects clients instead of waiting for them.
    server = Server("postgres", proc, signal.SIGINT)
    params: dict[str, Any] = {
        "NAME": "bench",
        "USER": "bench",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    try:
        import psycopg

        def ready() -> bool:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=port, user="bench", dbname="postgres", connect_timeout=2
                ):
                    return True
            except psycopg.Error:
                return False

        _wait_until(ready, proc, "postgres", log)
        with psycopg.connect(
            host="127.0.0.1", port=port, user="bench", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE bench")
    except BaseException:
        server.stop()
        raise
    return server, params


def postgres_version() -> str:
    bindir = find_pg_bin()
    if bindir is None:
        return "not installed"
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    words = out.split()  # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return words[2] if len(words) > 2 else out.strip() or "unknown"
