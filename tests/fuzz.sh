#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (in build-fuzz, with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer) and runs each for a short
# time, starting from its seed corpus in tests/fuzz/corpus/<target> (every
# seed, and every reproducer kept there, runs first). Exits non-zero if any
# target crashes, leaks, breaks an invariant or cannot be built.
#
#   tests/fuzz.sh                              # every target, 20 s each
#   FUZZ_SECONDS=600 tests/fuzz.sh fuzz_ops    # a longer run of one
#
# fuzz_args: every SQL function and table-valued function with fuzzed
#            argument counts, types and bytes (names, payloads, settings).
# fuzz_ops:  sequences of operations checked against a model (no message
#            lost, delivered twice or out of order; capacity; rollback).
# fuzz_sql:  SQL text (triggers, views, nesting, transactions).
# New inputs go to build-fuzz/corpus/<target>, never into the repository; a
# crash leaves its input in build-fuzz/artifacts/: once fixed, copy it into
# tests/fuzz/corpus/<target>/ so it runs every time.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
dir=${FUZZ_BUILD:-build-fuzz}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_args fuzz_ops fuzz_sql)

if ! { [ -f "$dir/build.ninja" ] ||
       CC=clang meson setup "$dir" -Dfuzz=true -Dtests=false -Dbench=false \
         -Db_lundef=false; } || ! meson compile -C "$dir"; then
  echo "== fuzz.sh: cannot build the fuzz targets (needs clang and libclang-rt-14-dev)"
  exit 1
fi

export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
failed=()
mkdir -p "$dir/artifacts"
for t in "${targets[@]}"; do
  mkdir -p "$dir/corpus/$t"
  log="$dir/$t.log"
  echo "== $t (${seconds} s)"
  if "$dir/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -dict=tests/fuzz/chanlite.dict -artifact_prefix="$dir/artifacts/$t-" \
       -print_final_stats=1 "$dir/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "   ok: $runs runs, $cov edges"
  else
    failed+=("$t")
    grep -E -A30 'ERROR|chanlite fuzz|deadly signal|SUMMARY' "$log" | head -60
    echo "   FAILED: full log in $log, input in $dir/artifacts/"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "== fuzz.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "== fuzz.sh: ${targets[*]} passed"
