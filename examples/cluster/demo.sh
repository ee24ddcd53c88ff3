#!/usr/bin/env bash
# The chat demo on three simulated machines: three chanlite nodes on
# 127.0.0.1, 127.0.0.2 and 127.0.0.3 (examples/cluster/cluster.sh), and the
# chat (examples/django_chat) on three daphne servers, ports 8001-8003, each
# configured with a different node first (it watches that node's wake hub;
# writes go to whichever node leads). Open the three pages; a message typed
# in one shows in the others. Kill the leader node (cluster.sh status names
# it; kill -9 its pid from DIR/node<N>.pid): after the election the chat
# goes on.
#
#   examples/cluster/demo.sh [DIR]     # DIR: the nodes' data and logs (default /tmp/chanlite-cluster)
#
# Needs build/node/chanlite-node (meson compile -C build, with libdqlite-dev)
# and Python >= 3.13 (dqlite-client): python3.13 on the PATH, pyenv's, or PYTHON=...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${1:-/tmp/chanlite-cluster}"
port="${PORT:-9001}"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  # The first that runs (a pyenv shim may exist without that version selected).
  for candidate in python3.13 python3.14 ~/.pyenv/versions/3.1[3-9].*/bin/python3; do
    if "$candidate" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
[ -n "$python" ] || { echo "demo: needs Python >= 3.13 (set PYTHON)" >&2; exit 1; }
venv="${CHAT_VENV:-$here/.venv}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$repo[cluster]" daphne

PORT="$port" "$here/cluster.sh" start "$dir"
nodes=(127.0.0.1:$port 127.0.0.2:$port 127.0.0.3:$port)
web=(8001 8002 8003)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  "$here/cluster.sh" stop "$dir" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$repo/examples/django_chat"
for i in 0 1 2; do
  # This server's own node first, then the others.
  others=()
  for j in 0 1 2; do [ "$j" = "$i" ] || others+=("${nodes[j]}"); done
  list="${nodes[i]},${others[0]},${others[1]}"
  CHANLITE_CLUSTER="$list" "$venv/bin/daphne" -b 127.0.0.1 -p "${web[i]}" mysite.asgi:application &
  pids+=($!)
done

deadline=$((SECONDS + 30))
for i in 0 1 2; do
  until (exec 3<>"/dev/tcp/127.0.0.1/${web[i]}") 2>/dev/null; do
    kill -0 "${pids[i]}" 2>/dev/null || { echo "demo: the server on ${web[i]} exited" >&2; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "demo: ${web[i]} did not start in 30 s" >&2; exit 1; }
    sleep 0.2
  done
done
echo
echo "demo: open these three pages; a message typed in one shows in the others:"
for i in 0 1 2; do echo "  http://localhost:${web[i]}/chat/lobby/   (node ${nodes[i]} first)"; done
echo "Kill the leader: $here/cluster.sh status $dir names it; kill -9 \$(cat $dir/node<N>.pid)."
echo "Ctrl-C stops the servers and the nodes."
wait -n
