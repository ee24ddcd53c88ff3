"""The chat demo in a real browser under ChannelsLiveServerTestCase: Selenium
drives Debian's headless chromium (through Debian's chromedriver) in two tabs
of one window; a message typed in one tab shows in the other.

Run by tests/python/test_channels_testing.py as
`python -m django test live_chat.tests_live` with live_chat.settings."""

from __future__ import annotations

import os
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import ChannelsLiveServerTestCase
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("CHANLITE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHANLITE_CHROMEDRIVER", "/usr/bin/chromedriver")
# Every wait in the browser is bounded by this (seconds).
TIMEOUT = 15


def _chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)  # --no-sandbox: chromium refuses to run as root without it
    # An explicit driver: Selenium Manager would otherwise look for Google Chrome.
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(TIMEOUT)
    return driver


class ChatLiveServerTestCase(ChannelsLiveServerTestCase):
    host = "127.0.0.1"
    serve_static = False

    def setUp(self) -> None:
        super().setUp()
        self.driver = _chromium()
        self.addCleanup(self.driver.quit)
        self.room = f"live-{uuid.uuid4().hex[:8]}"

    def _open_tab(self, *, new: bool) -> str:
        """The room in a tab (a new one, or the first); returns its handle
        once its WebSocket is open and joined."""
        if new:
            self.driver.switch_to.new_window("tab")
        self.driver.get(f"{self.live_server_url}/chat/{self.room}/")
        # The consumer joins the group, accepts, then sends its pid.
        WebDriverWait(self.driver, TIMEOUT).until(
            lambda d: d.execute_script("return document.body.dataset.pid || null")
        )
        return self.driver.current_window_handle

    def _type(self, tab: str, text: str, *, enter: bool) -> None:
        self.driver.switch_to.window(tab)
        box = self.driver.find_element(By.ID, "chat-message-input")
        box.send_keys(text)
        if enter:
            box.send_keys(Keys.ENTER)
        else:
            self.driver.find_element(By.ID, "chat-message-submit").click()

    def _wait_for_log(self, tab: str, log: str) -> None:
        self.driver.switch_to.window(tab)
        WebDriverWait(self.driver, TIMEOUT).until(
            lambda d: d.find_element(By.ID, "chat-log").get_property("value") == log,
            f"chat log of tab {tab} never became {log!r}",
        )

    def _group_send(self, message: dict[str, Any]) -> None:
        layer = get_channel_layer()
        assert layer is not None
        async_to_sync(layer.group_send)(f"chat_{self.room}", message)


class ChatInTwoTabsTests(ChatLiveServerTestCase):
    def test_message_typed_in_one_tab_shows_in_the_other(self) -> None:
        first = self._open_tab(new=False)
        second = self._open_tab(new=True)
        self.assertNotEqual(first, second)
        log = ""
        for i, (tab, other) in enumerate([(first, second), (second, first), (first, second)]):
            text = f"message {i} {uuid.uuid4().hex[:6]}"
            self._type(tab, text, enter=i == 1)
            log += f"{text}\n"
            self._wait_for_log(other, log)
            self._wait_for_log(tab, log)

    def test_group_send_from_the_test_process(self) -> None:
        """A send from this process (as a view or a signal handler would)
        reaches the live server's consumers, another process."""
        first = self._open_tab(new=False)
        second = self._open_tab(new=True)
        self._group_send({"type": "chat.message", "message": "from the test process"})
        self._wait_for_log(first, "from the test process\n")
        self._wait_for_log(second, "from the test process\n")


class ChatLayerUsedBeforeForkTests(ChatLiveServerTestCase):
    """A live server forked after this process has used the channel layer,
    as it has whenever an earlier test sent from a signal handler."""

    @classmethod
    def setUpClass(cls) -> None:
        layer = get_channel_layer()
        assert layer is not None

        async def round_trip() -> None:
            channel = await layer.new_channel()
            await layer.group_add("before-fork", channel)
            await layer.group_send("before-fork", {"type": "before.fork"})
            assert await layer.receive(channel) == {"type": "before.fork"}
            await layer.group_discard("before-fork", channel)

        async_to_sync(round_trip)()
        super().setUpClass()

    def test_message_typed_in_one_tab_shows_in_the_other(self) -> None:
        first = self._open_tab(new=False)
        second = self._open_tab(new=True)
        text = f"after fork {uuid.uuid4().hex[:6]}"
        self._type(first, text, enter=True)
        self._wait_for_log(second, f"{text}\n")
        self._group_send({"type": "chat.message", "message": "and from the parent"})
        self._wait_for_log(first, f"{text}\nand from the parent\n")
        self._wait_for_log(second, f"{text}\nand from the parent\n")
