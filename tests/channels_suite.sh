#!/usr/bin/env bash
# django/channels' own test suite, with CHANNEL_LAYERS set to chanlite.
#
# The suite is channels 4.3.2's tests/ folder, vendored unedited in
# tests/thirdparty/channels-tests (the PyPI sdist does not carry it, and CI
# reaches PyPI but not GitHub). It runs in a copy, in a temporary directory,
# with this Python's packages (Django, daphne, selenium, chanlite) plus what
# only this suite needs, installed into the temporary directory and put first
# on PYTHONPATH: channels 4.3.2 itself (whatever version is installed),
# pytest-django (which must not be installed where tests/python runs: it
# would take over that suite's Django setup) and async-timeout.
# tests/channels_suite_layers.py, a pytest plugin, sets CHANNEL_LAYERS to
# chanlite on a file and starts Debian's chromium for their Selenium tests.
# Exits non-zero on any failure, or if the run takes over 10 minutes (some of
# their waits, such as for the live server to start, are unbounded).
#
#   tests/channels_suite.sh [pytest arguments]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

work="$(mktemp -d "${TMPDIR:-/tmp}/chanlite-channels-suite.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/tests/thirdparty/channels-tests/." "$work/suite"
cp "$repo/tests/channels_suite_layers.py" "$work/suite/"

# channels itself at the version the tests are from, whatever is installed.
want=4.3.2
"$python" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  --no-deps --target "$work/site" "channels==$want" "pytest-django>=4.9" "async-timeout>=4"
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
have="$("$python" -c 'import channels; print(channels.__version__)')"
if [ "$have" != "$want" ]; then
  echo "channels suite: the tests are channels $want's, but channels $have is imported" >&2
  exit 1
fi

export CHANLITE_SUITE_LAYER="$work/channels.sqlite3"
cd "$work/suite"
status=0
timeout 600 "$python" -m pytest -p channels_suite_layers -p no:cacheprovider \
  -o addopts="" -q "$@" || status=$?
# Their sample app's consumers (the Selenium tests) use the default layer:
# if it never opened its file, chanlite was not the layer under test.
if [ "$status" = 0 ] && [ ! -s "$CHANLITE_SUITE_LAYER" ]; then
  echo "channels suite: the chanlite layer file was never used ($CHANLITE_SUITE_LAYER)" >&2
  status=1
fi
exit "$status"
