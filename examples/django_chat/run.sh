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
ports=(8001 8002)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for port in "${ports[@]}"; do
  "$venv/bin/daphne" -b 127.0.0.1 -p "$port" mysite.asgi:application &
  pids+=($!)
done

# Wait (at most 30 s) until both servers answer, then say where to look.
deadline=$((SECONDS + 30))
for i in "${!ports[@]}"; do
  until (exec 3<>"/dev/tcp/127.0.0.1/${ports[$i]}") 2>/dev/null; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "chat: the server on port ${ports[$i]} exited (is the port in use?)" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "chat: the server on port ${ports[$i]} did not start in 30 s" >&2
      exit 1
    fi
    sleep 0.2
  done
done
echo
echo "chat: open these two pages; a message typed in one shows in the other:"
echo "  http://localhost:8001/chat/lobby/"
echo "  http://localhost:8002/chat/lobby/"
echo "(two daphne processes sharing the channel layer in $CHANLITE_DB; Ctrl-C stops both)"

# If either server stops, stop the other and exit.
wait -n
