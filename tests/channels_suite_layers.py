"""pytest plugin for tests/channels_suite.sh: runs django/channels' own test
suite (tests/thirdparty/channels-tests, unedited) with CHANNEL_LAYERS set to
chanlite, the one change a user makes.

Their conftest sets DJANGO_SETTINGS_MODULE to their sample project's settings
in its pytest_configure; this hook runs after it (trylast) and replaces
CHANNEL_LAYERS before any layer exists. The live server they fork for the
Selenium tests inherits the setting.

The other change is how the browser starts, which their SeleniumMixin leaves
to Selenium Manager (Google Chrome, sandboxed): Debian's chromium and
chromedriver, with --no-sandbox, which chromium needs to run as root."""

from __future__ import annotations

import os
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHANLITE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHANLITE_CHROMEDRIVER", "/usr/bin/chromedriver")


def chanlite_layers() -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "chanlite.layer.SQLiteChannelLayer",
            "CONFIG": {"path": os.environ["CHANLITE_SUITE_LAYER"]},
        }
    }


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    settings.CHANNEL_LAYERS = chanlite_layers()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    class DebianChromium(webdriver.Chrome):
        def __init__(self, options: Any = None, service: Any = None, **kwargs: Any) -> None:
            options = options or webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            options.add_argument("--no-sandbox")
            super().__init__(options=options, service=service or Service(CHROMEDRIVER), **kwargs)

    webdriver.Chrome = DebianChromium  # type: ignore[misc]


@pytest.hookimpl(trylast=True)
def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    return f"chanlite: CHANNEL_LAYERS = {settings.CHANNEL_LAYERS}"
