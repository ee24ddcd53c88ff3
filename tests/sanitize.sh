#!/usr/bin/env bash
# The whole meson test suite twice more: built with AddressSanitizer and
# UndefinedBehaviorSanitizer (in build-asan), and under valgrind (memcheck)
# with the normal build. Exits non-zero on any test failure, sanitizer
# report, valgrind error or definite leak; runs both even if the first fails.
#
#   tests/sanitize.sh                        # valgrind reuses ./build
#   VALGRIND_BUILD=DIR ASAN_BUILD=DIR tests/sanitize.sh
#
# Every test of `meson test` runs in both (SQL tests, cmocka unit tests, the
# multi-process test, the wake-up race, the benchmark smoke run); none is
# skipped. One is made smaller, under valgrind only: the multi-process test
# moves 5000 messages instead of 20000 (CHANLITE_MP_MESSAGES; same 8
# processes, same checks), since each process runs some 30 times slower
# there; likewise the crash test kills 10 processes, at most 1.5 s apart
# (a process takes a second to start under valgrind), instead of 100 at
# most 40 ms apart. Under ASan everything runs at full size but the disk
# test, which moves 5000 messages instead of 20000 in both runs
# (CHANLITE_DISK_MESSAGES; same checks; the issue's 20000 is checked by the
# normal build's run).
# The power-loss test cuts the power 8 times per mode under ASan and 3
# times (after at most 800 write-side calls) under valgrind, instead of 60;
# the files test passes 100 (ASan) and 20 (valgrind) messages past the
# bell's tamperer, not 400.
# Both runs give the multi-process test a 60 s busy timeout
# (CHANLITE_MP_BUSY_MS): slowed down this much, SQLite's unfair write lock
# can starve one of its 8 processes past 5 s on a loaded machine. The 5 s
# promise is checked by the normal build's run, in tests/run-all.sh.
# Takes about 8 minutes on 2 cores (about 40 s of it compiling build-asan; 1 to 2 minutes
# for the out-of-memory test in each).
set -uo pipefail
cd "$(dirname "$0")/.."

asan_dir=${ASAN_BUILD:-build-asan}
valgrind_dir=${VALGRIND_BUILD:-build}
start=$(date +%s)
failed=()

# UB is an error, not a warning; ASan and LeakSanitizer stop at the first
# report. The tests and the SQL test runner are built in the same sanitized
# build, so the runtime is loaded before they dlopen chanlite.so.
# fast_unwind_on_malloc=0: libsqlite3 has no frame pointers, and without it
# "freed by" stacks stop inside SQLite.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export CHANLITE_MP_BUSY_MS=60000
# The out-of-memory test (tests/c/oom.c) fails every Nth allocation for
# every N in the normal build; sanitized, it tries every 61st N (every
# 193rd under valgrind), which still reaches each call's whole path. Since
# the schema is verified on a connection's first write (thousands of
# allocations on channel_recv_batch's path), every 8th N took over 430 s
# under ASan; strides that are primes shift which allocations are hit. With
# the cluster's chanlite_outcome table in the schema, every 31st N took 272 s
# under ASan and every 97th 139 s under valgrind, the longest steps of the
# test command: the strides were doubled.
export CHANLITE_OOM_STRIDE=61
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:fast_unwind_on_malloc=0

echo "== AddressSanitizer + UndefinedBehaviorSanitizer ($asan_dir)"
if { [ -f "$asan_dir/build.ninja" ] || \
     meson setup "$asan_dir" -Db_sanitize=address,undefined -Db_lundef=false \
       -Dcmocka=enabled; } &&
   meson compile -C "$asan_dir" &&
   CHANLITE_DISK_MESSAGES=5000 CHANLITE_POWERLOSS_CUTS=8 CHANLITE_FILES_MESSAGES=100 meson test -C "$asan_dir" --print-errorlogs; then
  echo "   ASan+UBSan: passed ($(( $(date +%s) - start )) s so far)"
else
  failed+=("ASan+UBSan ($asan_dir)")
fi
# chanlite-node built with them, on three local nodes (about 15 s): a
# sanitizer report kills a node or fails its graceful stop, which the tests check.
if [ -x "$asan_dir/node/chanlite-node" ]; then
  echo "== chanlite-node under ASan+UBSan (tests/cluster/test_node.py)"
  if CHANLITE_NODE="$asan_dir/node/chanlite-node" CHANLITE_REQUIRE_NODE=1 CHANLITE_NODE_LATENCY_MS=200 \
     python3 -m pytest tests/cluster/test_node.py -q -p no:cacheprovider; then
    echo "   chanlite-node under ASan+UBSan: passed"
  else
    failed+=("chanlite-node under ASan+UBSan")
  fi
fi

echo "== valgrind ($valgrind_dir)"
# fork()ed children run under valgrind too (no exec, so no --trace-children
# needed): each checks itself and exits 1 on an error, which the parent
# test reports.
if { [ -f "$valgrind_dir/build.ninja" ] || meson setup "$valgrind_dir"; } &&
   meson compile -C "$valgrind_dir" &&
   CHANLITE_POWERLOSS_CUTS=3 CHANLITE_POWERLOSS_MAX_OPS=800 CHANLITE_FILES_MESSAGES=20 \
   CHANLITE_MP_MESSAGES=5000 CHANLITE_OOM_STRIDE=193 CHANLITE_DISK_MESSAGES=5000 CHANLITE_CRASH_MESSAGES=200 CHANLITE_CRASH_KILLS=10 \
   CHANLITE_CRASH_GAP_MS=1500 meson test -C "$valgrind_dir" --print-errorlogs --timeout-multiplier 4 \
     --wrapper 'valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite'; then
  echo "   valgrind: passed"
else
  failed+=("valgrind ($valgrind_dir)")
fi

elapsed=$(( $(date +%s) - start ))
if [ ${#failed[@]} -gt 0 ]; then
  echo "== sanitize.sh: FAILED: ${failed[*]} (${elapsed} s)"
  exit 1
fi
echo "== sanitize.sh: ASan+UBSan and valgrind passed (${elapsed} s)"
