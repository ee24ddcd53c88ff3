#!/usr/bin/env bash
# A three-node chanlite cluster on this machine, one node per loopback
# address (127.0.0.1, 127.0.0.2, 127.0.0.3), as three machines would run it.
#
#   examples/cluster/cluster.sh start [DIR]    # DIR: data and logs (default /tmp/chanlite-cluster)
#   examples/cluster/cluster.sh status [DIR]   # each node: running or not, its last role
#   examples/cluster/cluster.sh stop [DIR]
#
# PORT (default 9001) is every node's dqlite port; its wake hub listens on
# PORT + 1. CHANLITE_NODE is the binary (default: build/node/chanlite-node).
# Tests use tests/cluster/nodes.py instead, which picks free ports.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cmd="${1:-}"
dir="${2:-/tmp/chanlite-cluster}"
# The port start used is kept in DIR for status and stop.
port="${PORT:-$(cat "$dir/port" 2>/dev/null || echo 9001)}"
node="${CHANLITE_NODE:-$root/build/node/chanlite-node}"
hosts=(127.0.0.1 127.0.0.2 127.0.0.3)

running() { [ -f "$dir/node$1.pid" ] && kill -0 "$(cat "$dir/node$1.pid")" 2>/dev/null; }

start() {
  [ -x "$node" ] || { echo "no chanlite-node at $node: build it (meson compile -C build)" >&2; exit 1; }
  mkdir -p "$dir"
  echo "$port" >"$dir/port"
  for i in 1 2 3; do
    if running "$i"; then echo "node $i already running"; continue; fi
    args=(--id "$i" --address "${hosts[i - 1]}:$port" --data "$dir/node$i")
    # Node 1 bootstraps; the others join through any member.
    if [ "$i" != 1 ]; then
      for j in 1 2 3; do [ "$j" = "$i" ] || args+=(--join "${hosts[j - 1]}:$port"); done
    fi
    nohup "$node" "${args[@]}" >>"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
    echo "node $i: ${hosts[i - 1]}:$port (wake hub :$((port + 1))), log $dir/node$i.log"
  done
  # Ready when every node's log names a leader.
  for _ in $(seq 1 300); do
    ready=1
    for i in 1 2 3; do
      grep -q "role: \(leader\|follower\)" "$dir/node$i.log" 2>/dev/null || ready=0
    done
    [ "$ready" = 1 ] && { echo "cluster ready"; return; }
    sleep 0.1
  done
  echo "the cluster did not elect a leader in 30 s: see $dir/node*.log" >&2
  exit 1
}

stop() {
  for i in 1 2 3; do
    if running "$i"; then kill -TERM "$(cat "$dir/node$i.pid")"; fi
  done
  for i in 1 2 3; do
    while running "$i"; do sleep 0.1; done
    rm -f "$dir/node$i.pid"
  done
  echo "stopped"
}

status() {
  for i in 1 2 3; do
    if running "$i"; then state="running (pid $(cat "$dir/node$i.pid"))"; else state="stopped"; fi
    role="$(grep -o "role: .*" "$dir/node$i.log" 2>/dev/null | tail -n 1 || true)"
    echo "node $i ${hosts[i - 1]}:$port: $state${role:+, last $role}"
  done
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac
