"""The dashboard in Debian's headless Chromium (driven by Selenium through Debian's chromedriver;
no browser download) against the real server: a grid worker sees a card turn to "alert open"
without reloading when the engine raises an alert, answers "I'm going", and the family member's
page shows who is coming; a family member is refused another elder's card. Screenshots of the
overview and a card's page go to the test's tmp folder, and also to $CARECARD_SCREENSHOTS when
set (`CARECARD_SCREENSHOTS=docs/img pytest tests/test_dashboard_browser.py` refreshes the
README's pictures)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dashboard_helpers import CHEN, PASSWORD, WANG, EngineSide, add_accounts, make_village, serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Generous: a wait ends as soon as its condition holds; this bounds a broken page only.
WAIT_S = 30


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


def test_alert_goes_live_is_acknowledged_and_the_family_sees_who_is_coming(
        browser: WebDriver, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    day = make_village(data)
    add_accounts(data)
    served = serve(data)
    engine = EngineSide(data)
    try:
        log_in(browser, served.url, "grid")
        card = browser.find_element(By.ID, f"card-{CHEN}")
        assert card.get_attribute("data-state") == "fine"
        live_connected(browser)

        alert = engine.raise_sos(CHEN, time.time())  # as the engine commits an SOS
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
        live_connected(browser)
        browser.find_element(By.CSS_SELECTOR, f"#alert-{alert.id} button.go").click()
        WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f"#alert-{alert.id} .ack.pending"))
        live_connected(browser)
        assert engine.handle_requests(time.time()) == 1  # the engine takes the request
        WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_element(By.ID, f"alert-{alert.id}").get_attribute("data-state") == "acknowledged")
        assert "网格员小林" in browser.find_element(By.CSS_SELECTOR, f"#alert-{alert.id} .ack").text
        screenshot(browser, tmp_path, "dashboard-card.png")

        browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        WebDriverWait(browser, WAIT_S).until(lambda d: d.current_url.endswith("/login"))
        log_in(browser, served.url, "chen_son")
        assert [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, ".cards li")] == [f"card-{CHEN}"]
        browser.get(f"{served.url}/cards/{CHEN}")
        ack = browser.find_element(By.CSS_SELECTOR, f"#alert-{alert.id} .ack")
        assert "网格员小林" in ack.text

        browser.get(f"{served.url}/cards/{WANG}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "404"
        assert "王奶奶" not in browser.page_source
    finally:
        engine.close()
        served.stop()
