"""The Python and Django tests on the corners of the supported matrix.

    nox                      # both corners (what tests/run-all.sh runs)
    nox -s "tests(3.13-django6.1)" -- -k layer    # one corner, with pytest arguments

Each corner is a fresh virtualenv with the package built and installed from
this repository (``pip install .``) and tests/requirements.txt, on the oldest
supported Python with the oldest supported Django, and on the newest with the
newest. Django 6.x needs Python 3.12 or newer, so these two corners are the
pairs that stretch both ranges furthest. The interpreters are pyenv's
(~/.pyenv/versions/3.10.*, 3.13.*) when there, else whatever ``python3.10`` /
``python3.13`` is on the path.
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.default_venv_backend = "venv"
# Never fetch an interpreter: the machine's are the ones the matrix names.
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = False
# `nox` alone runs the corners; tests/run-all.sh runs the cluster session in a step of its own.
nox.options.sessions = ["tests"]

#: (Python, Django): the oldest pair and the newest pair the package supports.
CORNERS = [("3.10", "5.2"), ("3.13", "6.1")]


def _interpreter(version: str) -> str:
    """pyenv's newest build of ``version``, or the bare version for nox to find."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(
        glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")),
        key=lambda path: [int(part) for part in path.split(os.sep)[-3].split(".")],
    )
    return found[-1] if found else version


@nox.session(name="tests")
@nox.parametrize(
    ("python", "django"),
    [(_interpreter(python), django) for python, django in CORNERS],
    ids=[f"{python}-django{django}" for python, django in CORNERS],
)
def tests(session: nox.Session, django: str) -> None:
    """pytest tests/python on one corner."""
    session.install("-r", "tests/requirements.txt")
    session.install(".", f"django=={django}.*")
    session.run(
        "python",
        "-c",
        "import sys, django, channels, chanlite; "
        "print('python', sys.version.split()[0], 'django', django.__version__, "
        "'channels', channels.__version__, 'chanlite', chanlite.__file__)",
    )
    # The cluster parametrizations need chanlite-node: the session below runs them.
    _pytest(session, "not cluster")


def _pytest(session: nox.Session, markers: str) -> None:
    """pytest (testpaths: tests/python) on the tests the marker expression selects."""
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", markers,
        *session.posargs,
    )  # fmt: skip


@nox.session(name="cluster", python=_interpreter("3.13"))
def cluster(session: nox.Session) -> None:
    """The layer on a 3-node dqlite cluster: the contract tests' cluster
    parametrization, the fault tests and the demo's browser test (marker
    ``cluster``). Python 3.13 only (dqlite-client), with
    build/node/chanlite-node (or $CHANLITE_NODE)."""
    session.install("-r", "tests/requirements.txt")
    session.install(".[cluster]", "django==6.1.*")
    _pytest(session, "cluster")
