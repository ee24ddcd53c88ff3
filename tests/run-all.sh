#!/usr/bin/env bash
# Installs what is missing, lints (tests/lint.sh: ruff, clang-format), builds
# chanlite (and once more without cmocka and valgrind), and runs every test:
# the SQL tests, C tests, wake-up race and benchmark smoke run (meson test),
# the same suite under AddressSanitizer+UndefinedBehaviorSanitizer and under
# valgrind, each libFuzzer target for 20 s, the Python, Django and
# browser tests, and django/channels' own test suite with chanlite as its
# channel layer; then builds the documentation (running its SQL examples) and
# the sdist and wheel, and installs them. Exits non-zero on any failure.
#
#   tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: compiler, SQLite headers and shell, cmocka, valgrind, and
# chromium for the browser tests of the chat demo (driven by playwright from
# PyPI, which uses this chromium and never downloads one) and chromium-driver
# for the Selenium tests (ChannelsLiveServerTestCase, ours and channels' own).
# clang and its runtimes build the libFuzzer targets (tests/fuzz.sh);
# clang-format checks the C style (tests/lint.sh). libdqlite-dev builds
# chanlite-node (node/, docs/cluster.md); go-dqlite brings the dqlite shell
# its tests use.
debs=(gcc pkg-config libsqlite3-dev sqlite3 libcmocka-dev valgrind chromium
      chromium-driver clang libclang-rt-14-dev clang-format libdqlite-dev go-dqlite)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python tools: meson and ninja from PyPI (newer than Debian's, and what
# meson-python builds the wheel with), and the Python test dependencies.
python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt

# First, since it takes seconds: ruff and clang-format must change nothing.
echo "== lint"
tests/lint.sh

echo "== build"
# cmocka is optional for a user's build (-Dcmocka=auto); here it must be found,
# so that no test is quietly left out.
if [ -f build/build.ninja ]; then meson configure build -Dcmocka=enabled
else meson setup build -Dcmocka=enabled; fi
meson compile -C build

echo "== a plain build without cmocka and valgrind (tests/plain_build.sh)"
tests/plain_build.sh

echo "== meson test"
meson test -C build --print-errorlogs

# About 10 s: three chanlite-node processes on 127.0.0.1-3 (tests/cluster/nodes.py).
echo "== chanlite-node on a local three-node dqlite cluster (tests/cluster/test_node.py)"
CHANLITE_REQUIRE_NODE=1 python3 -m pytest tests/cluster/test_node.py -q -p no:cacheprovider

echo "== sanitizers and valgrind"
tests/sanitize.sh

echo "== fuzz (each target briefly)"
tests/fuzz.sh

if [ -d tests/python ]; then
  # The Python and Django tests on the two corners of the supported matrix
  # (noxfile.py): Python 3.10 with Django 5.2 and Python 3.13 with Django 6.1,
  # each in a fresh virtualenv with the package built from this repository
  # and tests/requirements.txt. They replace one run on the system python3
  # (3.11, between the two). Neither a build directory's extension nor
  # python/ on the path may stand in for the installed package there.
  echo "== python: Python 3.10 + Django 5.2, Python 3.13 + Django 6.1 (nox)"
  env -u CHANLITE_EXTENSION -u PYTHONPATH python3 -m nox --non-interactive
  # The package on the system python3 too, for the steps that follow.
  python3 -m pip install -q --disable-pip-version-check .

  # The layer on a 3-node dqlite cluster (chanlite-node from this build):
  # the contract tests' cluster parametrization and the fault tests, on
  # Python 3.13 only (dqlite-client needs it).
  echo "== python: the layer on a dqlite cluster (nox -s cluster)"
  env -u CHANLITE_EXTENSION -u PYTHONPATH python3 -m nox --non-interactive -s cluster

  echo "== channels' own test suite, CHANNEL_LAYERS = chanlite (tests/channels_suite.sh)"
  tests/channels_suite.sh

  # The hour-long soak's short form: 4 processes, a SIGKILL every 20 s; it
  # exits 1 if anything was lost or delivered twice or a curve is not flat.
  echo "== soak, 2 minutes (bench/soak/run.py)"
  python3 bench/soak/run.py --duration 105 --kill-every 20 --sample-every 2 --no-plot \
    --out build/soak-ci
fi

# Once, not on the nox corners: every example of the SQL reference run through
# build/tests/sqltest, the site built with warnings as errors, and a screenshot
# of its front page (docs/_build/front-page.png) taken by headless chromium.
echo "== documentation (docs/, tests/docs)"
python3 -m pip install -q --disable-pip-version-check -r docs/requirements.txt
python3 -m pytest -q -p no:cacheprovider tests/docs

# Once, not on the nox corners: it builds the sdist and the wheel and installs
# each into a fresh virtualenv.
echo "== the sdist and the manylinux wheel (tools/dist.sh, tests/dist)"
python3 -m pip install -q --disable-pip-version-check -r tools/dist-requirements.txt
python3 -m pytest -q -p no:cacheprovider tests/dist

# Node, Go and Rust: their packages, examples, and a test across them and Django.
echo "== other languages (tests/languages.sh)"
tests/languages.sh

# One closing line over every meson run (pytest prints its own above).
python3 - <<'PY'
import json, pathlib
passed = failed = 0
for log in [pathlib.Path(d) / "meson-logs/testlog.json" for d in ("build", "build-asan")]:
    if not log.exists():
        continue
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r.get("result") == "OK":
            passed += 1
        elif r.get("result") not in ("SKIP",):
            failed += 1
print(f"meson: {passed} passed, {failed} failed")
PY
