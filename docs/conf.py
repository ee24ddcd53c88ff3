"""Sphinx configuration of chanlite's documentation site (docs/*.md, MyST).

    pip install -r docs/requirements.txt
    sphinx-build -W docs docs/_build/html

Every Markdown page under docs/ is a page of the site; index.md's table of
contents lists the main ones in reading order and picks up any other page.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

project = "chanlite"
author = "the chanlite authors"
copyright = "chanlite's authors; MIT licence"
# meson.build's project(version:) is the version's one home.
release = re.search(
    r"project\([^)]*?\bversion:\s*'([^']+)'", (ROOT / "meson.build").read_text()
).group(1)
version = release

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "requirements.txt"]

# Links to a heading of another page, as GitHub renders them: page.md#some-heading.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"chanlite {release}"
html_static_path: list[str] = []
pygments_style = "friendly"
