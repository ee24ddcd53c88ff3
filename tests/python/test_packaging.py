"""The installed package carries every module of python/chanlite.

meson-python installs only the sources meson.build lists, so a new module
that is not listed works from the source tree (PYTHONPATH=python) and fails
once installed. The test command runs these tests against the installed
package, where this comparison means something.
"""

from pathlib import Path

import chanlite

SOURCE = Path(__file__).resolve().parents[2] / "python" / "chanlite"


def package_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.suffix in (".py", ".typed")}


def test_every_module_is_installed() -> None:
    installed = Path(chanlite.__file__).resolve().parent
    missing = package_files(SOURCE) - package_files(installed)
    assert not missing, f"not listed in meson.build's install_sources: {sorted(missing)}"


def test_the_extension_is_there() -> None:
    assert Path(chanlite.path()).is_file()
