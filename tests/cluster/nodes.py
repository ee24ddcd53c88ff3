"""A local dqlite cluster of chanlite-node processes, for tests and benchmarks.

    with Cluster() as cluster:              # 3 nodes on 127.0.0.1, .2 and .3
        cluster.addresses                   # ["127.0.0.1:PORT", ...]
        cluster.wake_addresses              # each node's wake hub
        leader = cluster.leader()           # the Node that leads now
        cluster.kill(leader)                # SIGKILL; cluster.stop_node() is SIGTERM
        cluster.wait_leader()               # a leader among the survivors
        cluster.restart(leader)             # the same id, address and data

The binary is $CHANLITE_NODE, else build/node/chanlite-node of this
checkout. Each node's stderr goes to <workdir>/node<ID>.log. Every node gets
the same free port on its own loopback address, as machines would; its wake
hub is on the port above. Only the standard library is needed (wire.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from . import wire
except ImportError:  # run as a script, or imported with tests/cluster on sys.path
    import wire  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def node_binary() -> str:
    path = os.environ.get("CHANLITE_NODE") or str(ROOT / "build" / "node" / "chanlite-node")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"chanlite-node not found at {path}: build it (meson compile -C build, needs "
            "libdqlite-dev) or set CHANLITE_NODE"
        )
    return path


def _free_on_all(hosts: tuple[str, ...], port: int) -> bool:
    for host in hosts:
        for p in (port, port + 1):
            with socket.socket() as s:
                try:
                    s.bind((host, p))
                except OSError:
                    return False
    return True


def free_port(hosts: tuple[str, ...]) -> int:
    """A port free, with the one above it, on every host."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if port < 65535 and _free_on_all(hosts, port):
            return port
    raise RuntimeError("no free port pair found")


@dataclass
class Node:
    id: int
    host: str
    port: int
    data: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def wake_address(self) -> str:
        return f"{self.host}:{self.port + 1}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    """N chanlite-node processes forming one cluster (node 1 bootstraps)."""

    def __init__(
        self,
        size: int = 3,
        workdir: str | Path | None = None,
        latency_ms: int | None = 20,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        binaries: dict[int, str] | None = None,
    ) -> None:
        if not 1 <= size <= len(HOSTS):
            raise ValueError(f"size must be from 1 to {len(HOSTS)}")
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="chanlite-cluster-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.binary = binary or node_binary()
        self.latency_ms = latency_ms
        self.extra_args = extra_args
        #: A node id's own binary in place of `binary` (a wrapper, say, for one node).
        self.binaries = dict(binaries or {})
        hosts = HOSTS[:size]
        port = free_port(hosts)
        self.nodes = [
            Node(
                i + 1, host, port, self.workdir / f"node{i + 1}", self.workdir / f"node{i + 1}.log"
            )
            for i, host in enumerate(hosts)
        ]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    @property
    def wake_addresses(self) -> list[str]:
        return [n.wake_address for n in self.nodes]

    def node(self, which: Node | int) -> Node:
        return which if isinstance(which, Node) else self.nodes[which - 1]

    def _spawn(self, node: Node) -> None:
        args = [
            self.binaries.get(node.id, self.binary),
            "--id",
            str(node.id),
            "--address",
            node.address,
            "--data",
            str(node.data),
            *(["--latency-ms", str(self.latency_ms)] if self.latency_ms else []),
            *self.extra_args,
        ]
        if node.id != 1:
            for other in self.nodes:
                if other is not node:
                    args += ["--join", other.address]
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def start(self, timeout: float = 60.0) -> None:
        """Starts every node (again, after stop(cleanup=False)); returns once all are
        voters and a leader serves."""
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                leader = self.leader(timeout=max(0.1, deadline - time.monotonic()))
                with wire.Connection(leader.address, timeout=2) as c:
                    members = c.cluster()
                    running = {n.id for n in self.nodes if n.running}
                    voters = {m[0] for m in members if m[2] == "voter"}
                    if running <= voters:
                        c.query(c.open("chanlite-ready"), "SELECT 1")
                        return
            except (OSError, wire.DqliteError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster was not ready in {timeout} s: see {self.workdir}")
            self._check_alive()
            time.sleep(0.05)

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() not in (None, -9, -15):
                raise RuntimeError(
                    f"node {node.id} exited with {node.process.returncode}: "
                    f"{node.log.read_text(errors='replace')[-2000:]}"
                )

    def leader(self, timeout: float = 30.0) -> Node:
        """The node that leads, as the running nodes agree (waits for one)."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    with wire.Connection(node.address, timeout=1) as c:
                        leader_id, address = c.leader()
                except (OSError, wire.DqliteError):
                    continue
                if leader_id and self.node(int(leader_id)).running:
                    with wire.Connection(address, timeout=1) as c:
                        if c.leader()[0] == leader_id:
                            return self.node(int(leader_id))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader in {timeout} s")
            time.sleep(0.02)

    wait_leader = leader

    def followers(self) -> list[Node]:
        lead = self.leader()
        return [n for n in self.nodes if n is not lead and n.running]

    def kill(self, which: Node | int, sig: int = signal.SIGKILL) -> Node:
        node = self.node(which)
        if node.process is not None and node.running:
            node.process.send_signal(sig)
            node.process.wait(timeout=30)
        return node

    def stop_node(self, which: Node | int) -> Node:
        return self.kill(which, signal.SIGTERM)

    def restart(self, which: Node | int) -> Node:
        node = self.kill(which)
        self._spawn(node)
        return node

    def add_node(self, timeout: float = 60.0) -> Node:
        """Starts one more node (the next loopback address), which joins as a voter."""
        if len(self.nodes) == len(HOSTS):
            raise ValueError(f"at most {len(HOSTS)} nodes")
        n = len(self.nodes) + 1
        port = self.nodes[0].port
        if not _free_on_all((HOSTS[n - 1],), port):
            raise RuntimeError(f"port {port} or {port + 1} is taken on {HOSTS[n - 1]}")
        node = Node(n, HOSTS[n - 1], port, self.workdir / f"node{n}", self.workdir / f"node{n}.log")
        self.nodes.append(node)
        self._spawn(node)
        self.wait_ready(timeout)
        return node

    def stop(self, cleanup: bool = True) -> dict[int, int]:
        """SIGTERM every running node and waits; returns their exit statuses (0 for a
        graceful stop). cleanup=False keeps the data to start again."""
        stopped = [n for n in self.nodes if n.running]
        for node in stopped:
            node.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        statuses = {}
        for node in stopped:
            assert node.process is not None
            try:
                statuses[node.id] = node.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.process.kill()
                statuses[node.id] = node.process.wait()
        if cleanup and self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return statuses

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
