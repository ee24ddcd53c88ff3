#!/usr/bin/env bash
# The sqlite3 shell tour: builds chanlite if needed, then runs tour.sql
# against a fresh database file, echoing each statement and its result.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v sqlite3 >/dev/null || ! command -v meson >/dev/null; then
  echo "installing what the build needs (same as the test command)..."
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc pkg-config libsqlite3-dev sqlite3 >/dev/null
  python3 -m pip install -q meson ninja
fi
[ -f build/build.ninja ] || meson setup build -Dtests=false -Dbench=false >/dev/null
meson compile -C build >/dev/null
db=$(mktemp -d)/tour.db
sqlite3 "$db" < examples/shell/tour.sql 2>&1
echo
echo "(the tour's database is $db)"
