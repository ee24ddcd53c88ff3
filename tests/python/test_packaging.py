"""The installed package carries every module of python/chanlite.

meson-python installs only the sources meson.build lists, so a new module
that is not listed works from the source tree (PYTHONPATH=python) and fails
once installed. The test command runs these tests against the installed
package, where this comparison means something.
"""

import re
from pathlib import Path

import pytest

import chanlite

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "python" / "chanlite"


def meson_version() -> str:
    """meson.build's ``project(version:)``: the version's one home."""
    found = re.search(r"project\([^)]*?\bversion:\s*'([^']+)'", (ROOT / "meson.build").read_text())
    assert found, "meson.build: no project(version: '...')"
    return found.group(1)


def package_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.suffix in (".py", ".typed")}


def test_every_module_is_installed() -> None:
    installed = Path(chanlite.__file__).resolve().parent
    missing = package_files(SOURCE) - package_files(installed)
    assert not missing, f"not listed in meson.build's install_sources: {sorted(missing)}"


def test_the_extension_is_there() -> None:
    assert Path(chanlite.path()).is_file()


def test_the_extension_reports_the_meson_version() -> None:
    conn = chanlite.connect(":memory:")
    try:
        version = conn.execute("SELECT chanlite_version()").fetchone()[0]
        debug = conn.execute("SELECT chanlite_debug()").fetchone()[0]
    finally:
        conn.close()
    assert version == f"v{meson_version()}"
    assert debug.startswith(f"chanlite v{meson_version()}\n")


def test_the_package_reports_the_meson_version() -> None:
    if Path(chanlite.__file__).resolve().parent == SOURCE:
        pytest.skip("imported from the source tree, which has no package metadata of its own")
    assert chanlite.__version__ == meson_version()
