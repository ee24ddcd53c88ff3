#!/usr/bin/env bash
# chanlite from Node, Go and Rust: packs and tests each package (bindings/node,
# bindings/go, bindings/rust), runs each example (examples/node, examples/go,
# examples/rust: each checks what it prints), then the cross-language test
# (tests/languages/: Node sends while Go waits; Rust and Node group_send to
# Django consumers). Fetches the npm, Go and cargo dependencies from their
# registries; node/npm, go and cargo come with the machine. Needs
# build/chanlite.so (meson compile -C build) and the Python test dependencies.
#
#   tests/languages.sh
#
# The three languages build at once (better-sqlite3 compiles SQLite from
# source, single-threaded); each one's log is printed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

for tool in node npm go cargo; do
  command -v "$tool" >/dev/null || { echo "languages: $tool not found (this machine kind has it)"; exit 1; }
done
export CHANLITE_EXTENSION=$root/build/chanlite.so
[ -f "$CHANLITE_EXTENSION" ] || { echo "languages: $CHANLITE_EXTENSION missing: meson compile -C build"; exit 1; }
# Kept in build/, so that a second run compiles nothing.
export CARGO_TARGET_DIR=$root/build/cargo
# The system's SQLite, instead of go-sqlite3 compiling its own copy (minutes).
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=libsqlite3"
# better-sqlite3 compiles from source (its prebuilt binaries are downloaded
# from outside the registry); node-gyp takes Node's headers from here.
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node.h ]; then
  export npm_config_nodedir=/usr
fi
logs=$root/build/languages
mkdir -p "$logs"

node_steps() {
  (cd bindings/node && npm pack --silent --pack-destination "$root/build/npm") &&
    # From here on, the prebuilt file the tarball carries, as a user gets it.
    unset CHANLITE_EXTENSION &&
    # -O0: the SQLite that better-sqlite3 compiles takes a third of the CPU
    # time; these tests need it correct, not fast.
    (cd examples/node && CFLAGS=-O0 npm install --no-audit --no-fund --loglevel=error) &&
    # The package's own test, on the better-sqlite3 the example installed
    # (one compile of SQLite, not two).
    (cd bindings/node && NODE_PATH=$root/examples/node/node_modules node --test test/) &&
    (cd examples/node && node example.mjs)
}

go_steps() {
  (cd bindings/go && go vet ./... && go test -count=1 ./...) &&
    (cd examples/go && go vet . && go build -o "$logs/chanlite-example-go" . &&
      "$logs/chanlite-example-go")
}

rust_steps() {
  (cd bindings/rust && cargo test --quiet &&
    cargo package --quiet --allow-dirty && cargo package --list --allow-dirty) &&
    (cd examples/rust && cargo build --quiet && "$CARGO_TARGET_DIR/debug/chanlite-example")
}

mkdir -p build/npm
pids=()
for lang in node go rust; do
  "${lang}_steps" >"$logs/$lang.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in 0 1 2; do
  lang=$(echo node go rust | cut -d' ' -f$((i + 1)))
  if wait "${pids[$i]}"; then status=ok; else status=FAILED; failed+=("$lang"); fi
  echo "== languages: $lang $status"
  cat "$logs/$lang.log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "== languages: FAILED: ${failed[*]}"
  exit 1
fi

echo "== languages: cross-language test"
PYTHONPATH=$root/python python3 -m pytest -q -p no:cacheprovider tests/languages
