"""What a release uploads installs anywhere: tools/dist.sh's sdist and wheel.

Run once by tests/run-all.sh (its own step, not under tests/python, which runs
twice): ``python3 -m pytest tests/dist``. It builds the sdist and the
manylinux wheel, checks the wheel's tags and what its extension links, and
installs each into a fresh virtualenv: the sdist with its build tools from
PyPI, the wheel into another Python than the one that built
it (a py3-none wheel serves every Python 3).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What chanlite.so may link: the C library and its maths library, nothing
#: else (never libsqlite3: it uses the SQLite of whatever process loads it).
ALLOWED_NEEDED = {"libc.so.6", "libm.so.6"}

#: Sends, receives and reads the version, in the installed package.
SMOKE = (
    "import chanlite; conn = chanlite.connect(':memory:'); "
    "print(conn.execute(\"SELECT channel_send('chat', 'hello')\").fetchone()[0], "
    "conn.execute(\"SELECT channel_recv('chat')\").fetchone()[0], "
    "conn.execute('SELECT chanlite_version()').fetchone()[0], chanlite.__version__)"
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [str(ROOT / "tools" / "dist.sh"), str(out)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    return out


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def install_in_fresh_venv(python: str, where: Path, package: Path) -> Path:
    """A new virtualenv of ``python`` with only ``package`` in it.

    Without its dependencies (Django, channels, msgpack: pure Python, and the
    nox step installs the package with them twice): what can go wrong here is
    the build and the wheel, and the smoke test needs neither. The venv gets
    no pip of its own; this one installs into it (``pip --python``), which
    saves seconds of ensurepip a venv.
    """
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True)
    venv_python = where / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q",
         "--disable-pip-version-check", "--no-deps", str(package)],
        check=True,
    )  # fmt: skip
    return venv_python


def version() -> str:
    found = re.search(r"project\([^)]*?\bversion:\s*'([^']+)'", (ROOT / "meson.build").read_text())
    assert found
    return found.group(1)


def other_python() -> str:
    """pyenv's (or the path's) Python 3.13, else 3.10: not the one running this."""
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for minor in ("3.13", "3.10"):
        if minor == mine:
            continue
        found = glob.glob(os.path.join(root, "versions", f"{minor}.*", "bin", f"python{minor}"))
        if found:
            return sorted(found)[-1]
        if on_path := shutil.which(f"python{minor}"):
            return on_path
    pytest.fail("no Python 3.13 or 3.10 to install the wheel into (the test command has both)")


def test_an_sdist_and_a_manylinux_wheel(dist: Path) -> None:
    assert only(list(dist.glob("*.tar.gz"))).name == f"chanlite-{version()}.tar.gz"
    wheel = only(list(dist.glob("*.whl")))
    # py3-none: one wheel for every Python 3; manylinux_2_17 (manylinux2014): any
    # distribution with glibc 2.17 or newer. A libc symbol newer than that (glibc
    # 2.33's stat(), say) raises the tag and shuts out older distributions.
    assert re.fullmatch(
        rf"chanlite-{re.escape(version())}-py3-none-(manylinux\w+\.)*manylinux_2_17_x86_64\.whl",
        wheel.name,
    ), wheel.name
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert re.search(
        r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s+"manylinux_2_17_x86_64"', shown
    )


def test_the_wheel_carries_an_extension_that_links_only_libc(dist: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(only(list(dist.glob("*.whl")))) as wheel:
        names = wheel.namelist()
        assert "chanlite/chanlite.so" in names
        assert "chanlite/layer.py" in names
        # auditwheel grafts libraries it must vendor into chanlite.libs/: none.
        assert not [n for n in names if ".libs/" in n], names
        so = Path(wheel.extract("chanlite/chanlite.so", tmp_path))
    dynamic = subprocess.run(
        ["readelf", "--dynamic", str(so)], check=True, capture_output=True, text=True
    ).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    assert "libc.so.6" in needed
    assert needed <= ALLOWED_NEEDED, needed
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic


def test_the_sdist_installs_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    """Builds with meson-python, meson and ninja from PyPI and SQLite's headers."""
    python = install_in_fresh_venv(
        sys.executable, tmp_path / "venv", only(list(dist.glob("*.tar.gz")))
    )
    smoke = subprocess.run([str(python), "-c", SMOKE], check=True, capture_output=True, text=True)
    assert smoke.stdout.split() == ["1", "hello", f"v{version()}", version()]


def test_the_wheel_installs_into_another_python(dist: Path, tmp_path: Path) -> None:
    python = install_in_fresh_venv(
        other_python(), tmp_path / "venv", only(list(dist.glob("*.whl")))
    )
    smoke = subprocess.run([str(python), "-c", SMOKE], check=True, capture_output=True, text=True)
    assert smoke.stdout.split() == ["1", "hello", f"v{version()}", version()]
