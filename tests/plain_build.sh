#!/usr/bin/env bash
# The promise of docs/install.md and the README's quick start, checked: on a
# machine with SQLite's headers but neither cmocka nor valgrind, a plain
# `meson setup build && meson compile -C build` works, the cmocka unit tests
# are not defined (and meson says why), the other tests still run, and the
# sqlite3 shell loads the extension.
#
#   tests/plain_build.sh
#
# The test command installs cmocka and valgrind, so this script runs itself
# again in a private mount namespace that hides them: every file of their
# Debian packages is covered by an empty file (not executable) and each
# directory of their own by an empty tmpfs, as if never installed. The rest of
# the machine (compiler, meson, SQLite) is the real one. It first checks that
# the hiding worked (pkg-config, cmake through meson, the shell), so it cannot
# pass by finding nothing to hide. Needs root or unprivileged user namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

hidden_packages=(libcmocka-dev libcmocka0 valgrind)

if [ "${1:-}" != --inside ]; then
  for p in "${hidden_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      { echo "plain_build.sh: $p is not installed, so hiding it proves nothing" >&2; exit 1; }
  done
  # The scratch directory is removed out here, once the namespace and its
  # mounts are gone.
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/chanlite-plain.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(--map-root-user)
  CHANLITE_PLAIN_SCRATCH=$scratch unshare --mount "${as_root[@]}" --propagation private \
    "$0" --inside
  exit
fi
build=$CHANLITE_PLAIN_SCRATCH

empty=$build/empty
: >"$empty"
chmod 0644 "$empty"
# Directories first (dpkg lists a directory before its files): a file under
# a directory already covered is gone and needs nothing more.
for p in "${hidden_packages[@]}"; do
  while IFS= read -r path; do
    if [ -d "$path" ]; then
      case "$path" in */cmocka | */cmockery | */valgrind) mount -t tmpfs none "$path" ;; esac
    elif [ -f "$path" ]; then
      mount --bind "$empty" "$path"
    fi
  done < <(dpkg-query -L "$p")
done

fail() { echo "plain_build.sh: FAILED: $*" >&2; exit 1; }
pkg-config --exists cmocka && fail "pkg-config still finds cmocka"
valgrind --version >/dev/null 2>&1 && fail "valgrind still runs"
python3 -c 'import shutil, sys; sys.exit(shutil.which("valgrind") is not None)' ||
  fail "valgrind is still found on the path"
[ -s /usr/include/cmocka.h ] && fail "cmocka.h is still there"


# meson's every way to find cmocka (pkg-config, then cmake) comes up empty.
if meson setup "$build/required" -Dcmocka=enabled >"$build/required.log" 2>&1; then
  fail "meson still finds cmocka (-Dcmocka=enabled configured)"
fi

echo "== plain meson setup, without cmocka and valgrind"
meson setup "$build/plain" | tee "$build/setup.log"
grep -q "cmocka not found: the unit tests (tests/c/unit.c) are not defined" "$build/setup.log" ||
  fail "meson setup did not say that the unit tests are left out"
meson compile -C "$build/plain" >/dev/null

tests=$(meson test -C "$build/plain" --list)
grep -qx 'c - chanlite:unit' <<<"$tests" && fail "the unit test is defined without cmocka"
grep -qx 'sql - chanlite:sql/send_recv' <<<"$tests" || fail "the SQL tests are missing: $tests"

meson test -C "$build/plain" --suite sql --print-errorlogs >/dev/null ||
  fail "the SQL tests failed in the plain build"
loaded=$(sqlite3 :memory: ".load $build/plain/chanlite" \
  "SELECT channel_send('chat', 'hello'); SELECT channel_recv('chat');")
[ "$loaded" = "$(printf '1\nhello')" ] || fail "the sqlite3 shell gave: $loaded"
echo "== plain build: built without cmocka and valgrind, unit tests left out, SQL tests passed, loads"
