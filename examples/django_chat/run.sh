#!/usr/bin/env bash
# The chat demo: two daphne server processes, on ports 8001 and 8002, sharing
# one chanlite database file. Open http://localhost:8001/chat/lobby/ and
# http://localhost:8002/chat/lobby/: a message typed in one shows in the other.
#
#   examples/django_chat/run.sh          # installs what it needs, then serves
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
debs=(gcc pkg-config libsqlite3-dev python3-venv)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

venv="${CHAT_VENV:-$here/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$repo" daphne

cd "$here"
export CHANLITE_DB="${CHANLITE_DB:-$here/channels.sqlite3}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for port in 8001 8002; do
  "$venv/bin/daphne" -b 127.0.0.1 -p "$port" mysite.asgi:application &
  pids+=($!)
done
echo "chat: http://localhost:8001/chat/lobby/ and http://localhost:8002/chat/lobby/ (Ctrl-C stops)"
wait
