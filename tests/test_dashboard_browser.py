"""The dashboard in Debian's headless Chromium (driven by Selenium through Debian's chromedriver;
no browser download) against the real server and the real `carecard receive` with its alert
engine: a grid worker sees a card turn to "alert open" without reloading when the card's SOS frame
reaches the receiver and the engine raises the alert, answers "I'm going" (the engine takes the
request), and the family member's page shows who is coming; a family member is refused another
elder's card. Screenshots of the overview and a card's page go to the test's tmp folder, and also
to $CARECARD_SCREENSHOTS when set (`CARECARD_SCREENSHOTS=docs/img pytest
tests/test_dashboard_browser.py` refreshes the README's pictures)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dashboard_helpers import CHEN, HOME, PASSWORD, WANG, add_accounts, make_village, serve
from receiver_helpers import Card, ReceiverProcess, exchange, key_for, udp_client

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Generous: a wait ends as soon as its condition holds; this bounds a broken page only.
WAIT_S = 30
ENGINE_STARTED = "lease taken"  # the engine's log line once it holds its lease
ENGINE_SETTINGS = """
[defaults]
family = ["+8613800138001 儿子"]
grid_worker = "+8613900139000 网格员小林"
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=900,1300", "--lang=zh-CN", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("CARECARD_SCREENSHOTS"):
        folders.append(Path(os.environ["CARECARD_SCREENSHOTS"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(folder / name)), f"no screenshot written to {folder / name}"


def log_in(driver: WebDriver, url: str, name: str) -> None:
    driver.get(url + "/login")
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-button").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: d.current_url.rstrip("/") == url)


def live_connected(driver: WebDriver) -> None:
    WebDriverWait(driver, WAIT_S).until(
        lambda d: "on" in d.find_element(By.ID, "live-dot").get_attribute("class"))


class Receiver:
    """`carecard receive` with its engine; its log read on (so the pipe never fills) and
    `engine_started` set when the engine has taken its lease (a new engine starts at the end of
    the event log: a frame before that is not its to alert on)."""

    def __init__(self, data: Path, config: Path):
        self.process = ReceiverProcess(data, "--config", str(config))
        self.engine_started = threading.Event()
        self.lines: list[str] = []
        if any(ENGINE_STARTED in str(record.get("msg", "")) for record in self.process.log):
            self.engine_started.set()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        stream = self.process.proc.stderr
        assert stream is not None
        for line in stream:
            self.lines.append(line)
            try:
                message = json.loads(line).get("msg", "")
            except ValueError:
                message = line
            if ENGINE_STARTED in message:
                self.engine_started.set()

    def stop(self) -> None:
        self.process.proc.terminate()
        self.process.proc.wait(20)
        self.thread.join(5)


def test_an_sos_through_the_receiver_goes_live_is_acknowledged_and_the_family_sees_who_is_coming(
        browser: WebDriver, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    day = make_village(data)
    add_accounts(data)
    (tmp_path / "engine.toml").write_text(ENGINE_SETTINGS, encoding="utf-8")
    config = tmp_path / "carecard.toml"
    config.write_text(f'[engine]\nsettings = "{tmp_path / "engine.toml"}"\npoll_s = 0.1\n', encoding="utf-8")
    receiver = Receiver(data, config)
    served = serve(data)
    try:
        assert receiver.engine_started.wait(WAIT_S), "".join(receiver.lines)
        log_in(browser, served.url, "grid")
        card = browser.find_element(By.ID, f"card-{CHEN}")
        assert card.get_attribute("data-state") == "fine"
        live_connected(browser)

        lat, lon = HOME[CHEN]
        sos = Card(CHEN, key_for(CHEN), counter=1000).frame(  # after the village's frames
            "sos", trigger="long_press", lat_e7=round(lat * 1e7), lon_e7=round(lon * 1e7), fix="3d",
            fix_age_s=20, battery_pct=64, time=int(time.time()))
        assert exchange(udp_client(), receiver.process.udp_port, sos) is not None  # acked: stored
        WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_element(By.ID, f"card-{CHEN}").get_attribute("data-state") == "alert_open")
        first = browser.find_element(By.CSS_SELECTOR, ".cards li")
        assert first.get_attribute("id") == f"card-{CHEN}"  # the card needing someone comes first
        assert browser.current_url.rstrip("/") == served.url  # no reload, no navigation
        screenshot(browser, tmp_path, "dashboard-overview.png")

        browser.get(f"{served.url}/cards/{CHEN}?day={day}")
        WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
            "return document.querySelectorAll('.leaflet-overlay-pane path').length") >= 2)
        assert browser.find_elements(By.CSS_SELECTOR, ".leaflet-control-scale")
        assert not browser.find_elements(By.CSS_SELECTOR, ".leaflet-tile")  # no tile URL: plain
        (alert,) = [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "[id^='alert-']")]
        live_connected(browser)
        browser.find_element(By.CSS_SELECTOR, f"#{alert} button.go").click()
        # the engine in the receiver takes the request: the SOS is acknowledged (which closes it)
        done = WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f"#{alert} .ack:not(.pending)"))
        assert "网格员小林" in done[0].text
        assert browser.find_element(By.ID, alert).get_attribute("data-state") in ("acknowledged", "resolved")
        screenshot(browser, tmp_path, "dashboard-card.png")

        browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        WebDriverWait(browser, WAIT_S).until(lambda d: d.current_url.endswith("/login"))
        log_in(browser, served.url, "chen_son")
        assert [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, ".cards li")] == [f"card-{CHEN}"]
        browser.get(f"{served.url}/cards/{CHEN}")
        assert "网格员小林" in browser.find_element(By.CSS_SELECTOR, f"#{alert} .ack:not(.pending)").text

        browser.get(f"{served.url}/cards/{WANG}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "404"
        assert "王奶奶" not in browser.page_source
    finally:
        served.stop()
        receiver.stop()
