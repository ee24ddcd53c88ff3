#!/usr/bin/env bash
# The lint step of the test command (tests/run-all.sh runs it first: it fails
# fast). Python: ruff check and ruff format, with pyproject.toml's [tool.ruff]
# (bench/peers has its own ruff.toml). C: clang-format 14 with .clang-format,
# over ext/, tests/ and bench/. Fails on anything either would change.
#
#   tests/lint.sh         check
#   tests/lint.sh --fix   apply what they would change
set -uo pipefail
cd "$(dirname "$0")/.."

c_files=(ext/*.c ext/*.h node/*.c node/*.h tests/*.c tests/c/*.c tests/c/*.h tests/fuzz/*.c tests/fuzz/*.h bench/*.c)
# Another clang-format version formats some lines differently: use Debian's 14.
clang_format=$(command -v clang-format-14 || command -v clang-format || true)
if [ -z "$clang_format" ]; then
  echo "== lint: clang-format not found (apt-get install clang-format)"
  exit 1
fi

if [ "${1:-}" = --fix ]; then
  python3 -m ruff check --fix . && python3 -m ruff format . &&
    "$clang_format" -i "${c_files[@]}"
  exit
fi

failed=()
python3 -m ruff check . || failed+=("ruff check")
python3 -m ruff format --check . || failed+=("ruff format (python3 -m ruff format .)")
"$clang_format" --dry-run --Werror "${c_files[@]}" ||
  failed+=("clang-format ($clang_format -i FILE, or tests/lint.sh --fix)")
if [ ${#failed[@]} -gt 0 ]; then
  echo "== lint: FAILED: ${failed[*]}"
  exit 1
fi
echo "== lint: ruff and clang-format find nothing to change"
