"""The web page in a real browser: Debian's chromium through chromedriver (selenium), against the real
service of conftest.py. Skipped where chromium or chromedriver is not installed (``.ci/run`` installs them)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_image

pytestmark = pytest.mark.browser
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(fn, timeout: float = 60.0):  # noqa: ANN001, ANN201
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting in the browser")


def test_upload_slider_download_and_error(browser, service, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, _ = service
    d = browser
    d.get(url + "/")
    wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#scale option"))
    image = write_image(tmp_path / "photo.png", (40, 28))
    d.find_element(By.ID, "file").send_keys(str(image))
    d.find_element(By.ID, "go").click()
    wait_for(lambda: d.find_element(By.ID, "download").get_attribute("hidden") is None)
    assert d.execute_script("return document.getElementById('after').naturalWidth") == 80
    assert "Model:" in d.find_element(By.ID, "info").text and " ms" in d.find_element(By.ID, "info").text

    slider = d.find_element(By.ID, "slider")
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert d.execute_script("return document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 52%)"

    d.find_element(By.ID, "download").click()
    saved = wait_for(lambda: [p for p in Path(d.downloads).iterdir() if p.suffix == ".png"])
    assert Image.open(saved[0]).size == (80, 56)

    fake = tmp_path / "notes.png"
    fake.write_text("this is text, not an image")
    d.find_element(By.ID, "file").send_keys(str(fake))
    d.find_element(By.ID, "go").click()
    error = wait_for(lambda: d.find_element(By.ID, "error").text)
    assert error.startswith("Error:") and "not a supported image" in error
