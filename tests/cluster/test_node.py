"""chanlite-node on a real three-node dqlite cluster (127.0.0.1, .2 and .3).

Joining, role logs, graceful stop and restart; node mode through raw EXEC and
QUERY requests and through the ``dqlite`` shell: each refused statement gets
its chanlite error, and the cluster stays up and consistent (what the leader
committed is on every node, shown by making each the leader in turn); and the
wake hub's protocol. Needs build/node/chanlite-node (or $CHANLITE_NODE); it
is skipped when that is missing unless CHANLITE_REQUIRE_NODE=1 (the test
command sets it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import wire
from .nodes import Cluster, Node, free_port, node_binary

try:
    BINARY = node_binary()
except FileNotFoundError as e:
    if os.environ.get("CHANLITE_REQUIRE_NODE") == "1":
        raise
    pytest.skip(str(e), allow_module_level=True)

DB = "node-tests"
REFUSED_TEXT = (
    "() in a dqlite node must run inside the client's transaction: committed on its own it "
    "would not be replicated; send EXEC 'BEGIN IMMEDIATE', then this statement, then EXEC "
    "'COMMIT'"
)
WAIT_TEXT = "chanlite: channel_wait() cannot run in a dqlite node"


# Heartbeats every 1.5 x this: generous, so that a loaded machine (or a
# sanitized build, tests/sanitize.sh) does not lose its leader for nothing.
LATENCY_MS = int(os.environ.get("CHANLITE_NODE_LATENCY_MS", "50"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(latency_ms=LATENCY_MS)
    try:
        c.start()
        yield c
    finally:
        # Every node stops gracefully (and, built with sanitizers, cleanly).
        assert set(c.stop().values()) <= {0}


def send(conn: wire.Connection, db: int, channel: str, message: str) -> None:
    conn.exec(db, "BEGIN IMMEDIATE")
    conn.query(db, "SELECT channel_send(?, ?)", channel, message)
    conn.exec(db, "COMMIT")


def receive_all(conn: wire.Connection, db: int, channel: str) -> list[str]:
    conn.exec(db, "BEGIN IMMEDIATE")
    rows = conn.query(db, "SELECT message FROM channel_recv_batch(?, 1000)", channel)
    conn.exec(db, "COMMIT")
    return [str(r[0]) for r in rows]


def depth_on_every_node(cluster: Cluster, channel: str) -> dict[int, int]:
    """The channel's depth as each node sees it once it leads: a follower
    refuses queries, so leadership moves to each node in turn."""
    depths = {}
    for node in cluster.nodes:
        deadline = time.monotonic() + 60
        while (leader := cluster.leader()) is not node:
            # A transfer fails while the node is still catching up: try again.
            try:
                with wire.Connection(leader.address, timeout=30) as c:
                    c.transfer(node.id)
            except (OSError, wire.DqliteError) as e:
                assert time.monotonic() < deadline, f"leadership never moved to {node.id}: {e}"
                time.sleep(0.05)
        with wire.Connection(node.address) as c:
            rows = c.query(
                c.open(DB), "SELECT depth FROM chanlite_channels WHERE channel = ?", channel
            )
        depths[node.id] = int(rows[0][0]) if rows else 0  # type: ignore[arg-type]
    return depths


def wait_for_log(node: Node, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log.read_text():
        assert time.monotonic() < deadline, f"node {node.id} never logged {text!r}"
        time.sleep(0.02)


def assert_all_up(cluster: Cluster) -> None:
    for node in cluster.nodes:
        assert node.running, node.log.read_text()
        assert "Assertion" not in node.log.read_text()


def test_nodes_join_as_voters_and_log_their_roles(cluster: Cluster) -> None:
    leader = cluster.leader()
    with wire.Connection(leader.address) as c:
        members = sorted(c.cluster())
    assert members == [(n.id, n.address, "voter") for n in cluster.nodes]
    wait_for_log(leader, "role: leader")
    for node in cluster.followers():
        wait_for_log(node, "join: joined the cluster as a voter")
        # A node logs its role when its next poll (every 250 ms) sees it.
        wait_for_log(node, f"role: follower (leader: node {leader.id} at {leader.address})")


REFUSED = [
    ("SELECT channel_send('refused', 'x')", "channel_send"),
    ("SELECT channel_recv('refused')", "channel_recv"),
    ("SELECT channel, message FROM channel_recv_batch('refused', 10)", "channel_recv_batch"),
    ("SELECT group_add('g', 'refused')", "group_add"),
    ("SELECT group_discard('g', 'refused')", "group_discard"),
    ("SELECT group_send('g', 'x')", "group_send"),
    ("SELECT channel_flush()", "channel_flush"),
    ("SELECT channel_trim()", "channel_trim"),
    ("SELECT chanlite_config('expiry', 30)", "chanlite_config"),
    ("SELECT chanlite_capacity('refused*', 5)", "chanlite_capacity"),
]


def test_refused_requests_leave_the_cluster_up_and_consistent(cluster: Cluster) -> None:
    with wire.Connection(cluster.leader().address) as c:
        db = c.open(DB)
        send(c, db, "refused", "kept")  # a queue that is not empty: recv would pop
        for request in (c.query, c.exec):
            for sql, fn in REFUSED:
                with pytest.raises(wire.DqliteError) as e:
                    request(db, sql)
                assert e.value.message == f"chanlite: {fn}{REFUSED_TEXT}", (request, sql)
            with pytest.raises(wire.DqliteError) as e:
                request(db, "SELECT channel_wait('refused', 5)")
            assert e.value.message.startswith(WAIT_TEXT)
        # channel_wait is refused inside a transaction too, which goes on.
        c.exec(db, "BEGIN IMMEDIATE")
        with pytest.raises(wire.DqliteError) as e:
            c.query(db, "SELECT channel_wait('refused', 5)")
        assert e.value.message.startswith(WAIT_TEXT)
        c.query(db, "SELECT channel_send('refused', 'after')")
        c.exec(db, "COMMIT")
        assert c.query(db, "SELECT chanlite_bell_path()") == [(None,)]
    assert_all_up(cluster)
    # What the leader committed is on every node, and nothing refused is.
    assert depth_on_every_node(cluster, "refused") == {1: 2, 2: 2, 3: 2}
    with wire.Connection(cluster.leader().address) as c:
        assert receive_all(c, c.open(DB), "refused") == ["kept", "after"]
    assert_all_up(cluster)


@pytest.mark.skipif(shutil.which("dqlite") is None, reason="no dqlite shell (apt-get go-dqlite)")
def test_dqlite_shell(cluster: Cluster) -> None:
    def shell(sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["dqlite", "-s", ",".join(cluster.addresses), DB, sql],
            capture_output=True,
            text=True,
            timeout=60,
        )

    # The shell runs each statement in a transaction of its own: sends work.
    assert shell("SELECT channel_send('shell', 'hi')").stdout.strip() == "1"
    waited = shell("SELECT channel_wait('shell', 5)")
    assert waited.returncode != 0
    # libdqlite 1.11 puts a failed QUERY's column header before its error,
    # so go-dqlite shows the column name where the message should be.
    assert "query: channel_wait('shell', 5)" in waited.stdout + waited.stderr
    assert shell("SELECT channel_recv('shell')").stdout.strip() == "hi"
    assert_all_up(cluster)


def test_a_killed_follower_restarts_and_catches_up(cluster: Cluster) -> None:
    follower = cluster.followers()[0]
    cluster.kill(follower)
    with wire.Connection(cluster.leader().address) as c:
        db = c.open(DB)
        for i in range(20):
            send(c, db, "catch-up", f"m{i}")
    cluster.restart(follower)
    cluster.wait_ready()
    assert depth_on_every_node(cluster, "catch-up") == {1: 20, 2: 20, 3: 20}
    with wire.Connection(cluster.leader().address) as c:
        assert receive_all(c, c.open(DB), "catch-up") == [f"m{i}" for i in range(20)]


def test_sigterm_hands_leadership_over_and_the_node_rejoins(cluster: Cluster) -> None:
    leader = cluster.leader()
    cluster.stop_node(leader)
    assert leader.process is not None and leader.process.returncode == 0
    log = leader.log.read_text()
    assert "stop: Terminated received" in log
    assert "stop: leadership handed over" in log
    assert log.rstrip().endswith("chanlite-node: stopped")
    assert cluster.leader() is not leader
    with wire.Connection(cluster.leader().address) as c:
        send(c, c.open(DB), "handover", "while one is down")
    cluster.restart(leader)
    cluster.wait_ready()
    assert depth_on_every_node(cluster, "handover") == {1: 1, 2: 1, 3: 1}


@pytest.mark.skipif(shutil.which("dqlite") is None, reason="no dqlite shell (apt-get go-dqlite)")
def test_a_node_is_added_then_removed(cluster: Cluster) -> None:
    fourth = cluster.add_node()
    with wire.Connection(cluster.leader().address) as c:
        assert (fourth.id, fourth.address, "voter") in c.cluster()
    # As docs/cluster.md says: stop it, then remove it with the dqlite shell.
    cluster.stop_node(fourth)
    done = subprocess.run(
        ["dqlite", "-s", ",".join(cluster.addresses[:3]), DB, f".remove {fourth.address}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cluster.nodes.remove(fourth)
    with wire.Connection(cluster.leader().address) as c:
        assert sorted(c.cluster()) == [(n.id, n.address, "voter") for n in cluster.nodes]
        send(c, c.open(DB), "three-again", "served")


def test_a_node_with_a_members_id_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    taken = cluster.nodes[1]
    address = f"127.0.0.4:{taken.port}"
    argv = [BINARY, "--id", str(taken.id), "--address", address, "--data", str(tmp_path / "d")]
    done = subprocess.run(
        [*argv, "--join", cluster.nodes[0].address, "--wake-address", "off"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        f"join: id {taken.id} belongs to the node at {taken.address} already: give this node "
        "another id" in done.stderr
    )
    with wire.Connection(cluster.leader().address) as c:
        assert sorted(c.cluster()) == [(n.id, n.address, "voter") for n in cluster.nodes]


def test_the_whole_cluster_restarts_with_its_data(cluster: Cluster) -> None:
    with wire.Connection(cluster.leader().address) as c:
        send(c, c.open(DB), "restart", "survives")
    assert set(cluster.stop(cleanup=False).values()) == {0}
    cluster.start()
    with wire.Connection(cluster.leader().address) as c:
        assert receive_all(c, c.open(DB), "restart") == ["survives"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "127.0.0.1:1", "--data", "{d}"], "--id is required"),
        (["--id", "0", "--address", "127.0.0.1:1", "--data", "{d}"], "--id must be a positive"),
        (["--id", "1", "--address", "nowhere", "--data", "{d}"], "--address must be HOST:PORT"),
        (
            ["--id", "2", "--address", "127.0.0.1:1", "--data", "{d}"],
            "only --id 1 bootstraps a new cluster",
        ),
        (
            ["--id", "1", "--address", "127.0.0.1:1", "--data", "{d}", "--join", "127.0.0.2:1"],
            "a node that joins one needs another id",
        ),
        (
            ["--id", "1", "--address", "127.0.0.1:1", "--data", "{d}", "--latency-ms", "0"],
            "--latency-ms must be from 1 to 3600000",
        ),
        (["--id", "1", "--address", "127.0.0.1:65535", "--data", "{d}"], "give --wake-address"),
        (["--id", "1", "--bogus", "x"], "unknown option --bogus"),
    ],
)
def test_bad_arguments_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    argv = [BINARY] + [a.replace("{d}", str(tmp_path / "data")) for a in args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr


def test_an_address_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, message in [
            (["--address", f"127.0.0.1:{port}", "--wake-address", "off"], "the node on"),
            (
                ["--address", f"127.0.0.1:{port - 1}", "--wake-address", f"127.0.0.1:{port}"],
                "the wake hub on",
            ),
        ]:
            argv = [BINARY, "--id", "1", "--data", str(tmp_path / "d"), *args]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert done.returncode == 1
            assert f"cannot start {message} 127.0.0.1:{port}: Address already in use" in done.stderr


# ---- the wake hub ----


class HubClient:
    def __init__(self, address: str, rcvbuf: int = 0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        self.buf = b""

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(f"{line}\n" for line in lines).encode())

    def line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the hub closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def watch(self, *queues: str) -> None:
        self.send(*(f"watch {q}" for q in queues))
        for q in queues:
            assert self.line() == f"ok watch {q}"

    def close(self) -> None:
        self.sock.close()


def test_hub_wakes_watchers_of_the_rung_queue_only(cluster: Cluster) -> None:
    hub = cluster.nodes[0].wake_address
    chat, everything, ringer = HubClient(hub), HubClient(hub), HubClient(hub)
    chat.watch("chat", "w.abc!")
    everything.watch("*")
    # One connection's lines are handled in order: had "other" reached chat,
    # it would come before "chat".
    ringer.send("ring other", "ring chat w.abc!")
    assert chat.line() == "chat"
    assert chat.line() == "w.abc!"
    assert [everything.line() for _ in range(3)] == ["other", "chat", "w.abc!"]
    chat.send("unwatch chat")
    assert chat.line() == "ok unwatch chat"
    ringer.send("ring chat", "ring w.abc!")
    assert chat.line() == "w.abc!"
    chat.send("ping", "bogus", "watch " + "x" * 256)
    assert chat.line() == "pong"
    assert chat.line() == "error unknown command: the commands are watch, unwatch, ring and ping"
    assert chat.line().startswith("error a queue name is 1 to 255 printable characters")
    for c in (chat, everything, ringer):
        c.close()


def test_hub_drops_a_client_that_stops_reading_and_serves_the_others(cluster: Cluster) -> None:
    node = cluster.nodes[1]
    hub = node.wake_address
    slow = HubClient(hub, rcvbuf=4096)
    slow.watch("*")
    dead = HubClient(hub)
    dead.watch("*")
    dead.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    dead.close()  # reset, not closed cleanly
    half = HubClient(hub)
    half.sock.sendall(b"watch half-a-li")  # and never the rest
    fast, ringer = HubClient(hub), HubClient(hub)
    fast.watch("end")
    # About 6 MB of wakes for the slow client, every queue a new one (the hub
    # sends a wake it still owes only once): more than its buffers hold.
    lines = [" ".join(f"q{n:03d}.{i:02d}" + "x" * 240 for i in range(30)) for n in range(800)]
    ringer.send(*(f"ring {line}" for line in lines))
    ringer.send("ring end")
    assert fast.line() == "end"
    received = 0
    while True:
        chunk = slow.sock.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    assert 0 < received < sum(len(line) for line in lines)
    assert "wake hub: a client stopped reading" in node.log.read_text()
    ringer.send("ring end")
    assert fast.line() == "end"
    for c in (slow, half, fast, ringer):
        c.close()


def _thread_cpu_ticks(pid: int, name: str) -> int:
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == name:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
    raise LookupError(f"no thread {name} in process {pid}")


def test_hub_uses_no_cpu_while_idle(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    assert node.process is not None
    watcher = HubClient(node.wake_address)
    watcher.watch("idle")
    before = _thread_cpu_ticks(node.process.pid, "wake-hub")
    time.sleep(1.0)  # nothing is sent: a thread blocked in poll() accrues no ticks
    assert _thread_cpu_ticks(node.process.pid, "wake-hub") == before
    watcher.close()


def test_stopping_a_node_closes_its_hub_connections(cluster: Cluster) -> None:
    node: Node = cluster.nodes[2]
    watcher = HubClient(node.wake_address)
    watcher.watch("chat")
    cluster.kill(node, signal.SIGTERM)
    with pytest.raises(EOFError):
        watcher.line()
    watcher.close()
    cluster.restart(node)
    cluster.wait_ready()


@contextmanager
def single_node(tmp_path: Path, *args: str) -> Iterator[tuple[int, Path]]:
    """One node bootstrapping a cluster of one: (its port, its log)."""
    port = free_port(("127.0.0.1",))  # and the one above, for the wake hub
    log = tmp_path / "node.log"
    argv = [BINARY, "--id", "1", "--data", str(tmp_path / "d")]
    with open(log, "wb") as out:
        node = subprocess.Popen([*argv, *(a.format(port=port) for a in args)], stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "role: leader" not in log.read_text():
            assert node.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield port, log
    finally:
        node.terminate()
        assert node.wait(timeout=30) == 0


def test_wake_address_off_runs_no_hub(tmp_path: Path) -> None:
    args = ("--address", "127.0.0.1:{port}", "--wake-address", "off")
    with single_node(tmp_path, *args) as (port, log):
        assert "wake hub on none (off)" in log.read_text()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port + 1), timeout=5)


def test_bind_address_listens_where_told_and_advertises_address(tmp_path: Path) -> None:
    # Advertised as 127.0.0.9 (a proxy's, say); listening on 127.0.0.1.
    args = ("--address", "127.0.0.9:{port}", "--bind-address", "127.0.0.1:{port}")
    with single_node(tmp_path, *args) as (port, log):
        with wire.Connection(f"127.0.0.1:{port}") as c:
            assert c.leader() == (1, f"127.0.0.9:{port}")
        hub = HubClient(f"127.0.0.1:{port + 1}")
        hub.send("ping")
        assert hub.line() == "pong"
        hub.close()
        assert f"wake hub on 127.0.0.1:{port + 1}" in log.read_text()
