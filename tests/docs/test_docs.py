"""The documentation site (docs/): its SQL examples run, it builds, it looks right.

Run once by tests/run-all.sh, after the build (``python3 -m pytest tests/docs``;
docs/requirements.txt installed): not under tests/python, which runs twice.

- Every ```` ```sql ```` block of the SQL reference (docs/sql/*.md) is run. The
  blocks of a page, in order, are one tests/sql-style script on a fresh
  database: ``-->`` lines after a statement are its rows or its error, checked
  by tests/sqltest.c, the runner of tests/sql/*.test. So no example shows a
  result the extension does not give.
- Every SQL function and table chanlite registers has a page of its own.
- ``sphinx-build -W`` builds the site with no warning, and headless chromium
  opens its front page (styled, with its navigation) and saves a screenshot:
  docs/_build/front-page.png.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SQL_PAGES = sorted((DOCS / "sql").glob("*.md"))
BUILD = Path(os.environ.get("CHANLITE_BUILD", ROOT / "build"))
EXTENSION = Path(os.environ.get("CHANLITE_EXTENSION", BUILD / "chanlite.so"))
SQLTEST = BUILD / "tests" / "sqltest"
SITE = DOCS / "_build" / "html"
SCREENSHOT = DOCS / "_build" / "front-page.png"

sys.path.insert(0, str(ROOT / "tests" / "python"))
from helpers import chromium, open_page  # noqa: E402

#: The pages of the SQL reference that explain rather than describe one
#: function; their examples run too.
CONCEPT_PAGES = {"index", "semantics", "transactions", "waiting", "connection-settings", "errors"}


def sql_blocks(page: Path) -> list[str]:
    """The text of each ```sql fenced block of a Markdown page, in order
    (dedented, for a block inside a list item)."""
    blocks = re.findall(r"^([ \t]*)```sql\n(.*?)^\1```$", page.read_text(), flags=re.M | re.S)
    return [textwrap.dedent(block) for _, block in blocks]


def sqlite3_names(load: bool) -> set[str]:
    """The SQL functions and table-valued functions of a sqlite3 shell's
    connection, with chanlite loaded or not."""
    query = "SELECT name FROM pragma_function_list UNION SELECT name FROM pragma_module_list"
    out = subprocess.run(
        ["sqlite3", ":memory:", *([f".load {EXTENSION}"] if load else []), query],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize("page", SQL_PAGES, ids=lambda p: p.stem)
def test_the_examples_give_what_the_page_shows(page: Path, tmp_path: Path) -> None:
    blocks = sql_blocks(page)
    if page.stem not in CONCEPT_PAGES:
        assert blocks, f"{page.name}: a function's page shows at least one example"
        assert any("\n-->" in "\n" + b for b in blocks), f"{page.name}: no example shows a result"
    if not blocks:
        return
    script = tmp_path / f"{page.stem}.test"
    script.write_text("\n".join(blocks))
    run = subprocess.run(
        [str(SQLTEST), str(EXTENSION), str(script)], capture_output=True, text=True
    )
    assert run.returncode == 0, f"{page.relative_to(ROOT)}:\n{run.stdout}{run.stderr}"
    passed = re.search(r": (\d+) passed, 0 failed$", run.stdout, flags=re.M)
    assert passed and int(passed.group(1)) > 0, run.stdout


def test_every_function_and_table_has_a_page() -> None:
    names = sqlite3_names(load=True) - sqlite3_names(load=False)
    assert "channel_send" in names and "channel_recv_batch" in names, names
    pages = {p.stem for p in SQL_PAGES}
    assert not names - pages, f"no page in docs/sql/ for {sorted(names - pages)}"
    # chanlite_dead is a plain table (made on the first write), not registered.
    assert not pages - names - CONCEPT_PAGES - {"chanlite_dead"}, "pages of no function"


@pytest.fixture(scope="module")
def site() -> Path:
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-E",
         str(DOCS), str(SITE)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert run.returncode == 0, f"sphinx-build -W:\n{run.stdout}{run.stderr}"
    return SITE


def test_the_site_builds_with_every_page(site: Path) -> None:
    pages = {
        p.relative_to(DOCS).with_suffix("")
        for p in DOCS.rglob("*.md")
        if "_build" not in p.relative_to(DOCS).parts
    }
    built = {p.relative_to(site).with_suffix("") for p in site.rglob("*.html")}
    assert not pages - built, f"not built: {sorted(map(str, pages - built))}"


def test_the_front_page_looks_right(site: Path) -> None:
    errors: list[str] = []
    with chromium() as browser:
        page = open_page(browser, (site / "index.html").as_uri(), ".sidebar-tree", errors)
        page.set_viewport_size({"width": 1280, "height": 900})
        assert page.title().startswith("chanlite")
        nav = page.inner_text(".sidebar-tree")
        for title in ("Installing", "SQL reference", "Django", "Operations", "Performance"):
            assert title in nav, f"{title!r} missing from the navigation: {nav}"
        # Furo's stylesheet applied: the sidebar sits beside the content.
        sidebar = page.locator(".sidebar-drawer").bounding_box()
        content = page.locator("article").bounding_box()
        assert sidebar and content and sidebar["x"] + sidebar["width"] <= content["x"] + 1
        assert page.locator("article pre").count() >= 1, "no code example on the front page"
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert not errors, errors
    print(f"front page screenshot: {SCREENSHOT}")
