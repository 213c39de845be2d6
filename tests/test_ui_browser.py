"""The demo page /ui in a real headless Chromium, against a served instance on loopback.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
without them the test fails and says so rather than skipping. ``UI_SCREENSHOT=docs/ui.png``
also saves the final screenshot there (for docs/api.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.served

WAIT_S = 300  # the first interrogation waits for the label tables to be embedded


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small drawn PNG (sky, sun, hills): something a person can recognise on screen."""
    image = Image.new("RGB", (320, 200), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((230, 25, 290, 85), fill=(255, 210, 60))
    hills = [(0, 200), (0, 140), (90, 90), (190, 150), (260, 110), (320, 150), (320, 200)]
    draw.polygon(hills, fill=(70, 140, 80))
    path = tmp_path_factory.mktemp("ui-images") / "hills.png"
    image.save(path)
    return path


def test_page_and_assets_are_served(open_clip_url):
    page = httpx.get(f"{open_clip_url}/ui", follow_redirects=True)
    assert page.status_code == 200 and str(page.url) == f"{open_clip_url}/ui/"
    assert "text/html" in page.headers["content-type"]
    assert "Content-Security-Policy" in page.text  # no request may leave the service
    for asset, kind in [("app.js", "javascript"), ("api.js", "javascript"), ("style.css", "css")]:
        response = httpx.get(f"{open_clip_url}/ui/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    missing = httpx.get(f"{open_clip_url}/ui/nope.js")
    assert missing.status_code == 404 and "error" in missing.json()


def test_demo_page_end_to_end(browser, open_clip_url, picture, tmp_path):
    browser.get(f"{open_clip_url}/ui")
    assert browser.title == "clip-service demo"
    wait_text(browser, "#model-info", lambda text: text.startswith("Model local-dir:"))

    browser.find_element(By.ID, "image-file").send_keys(str(picture))
    wait_for(browser, lambda: browser.find_element(By.ID, "preview").is_displayed())
    assert "hills.png" in browser.find_element(By.ID, "image-name").text

    # Caption, then a fast-mode prompt (tiny random models: the words are gibberish).
    click(browser, "#describe-form button[value=caption]")
    caption = wait_text(browser, "#caption-output", lambda text: text != "—")
    Select(browser.find_element(By.ID, "mode")).select_by_value("fast")
    click(browser, "#describe-form button[value=interrogate]")
    prompt = wait_text(browser, "#prompt-output", lambda text: text != "—")
    assert prompt.startswith(caption)  # a fast prompt extends the caption
    assert no_error(browser, "#describe-error")

    # Typed labels: one table, probabilities that sum to 1 and are drawn as bars.
    labels = browser.find_element(By.ID, "labels")
    labels.clear()
    labels.send_keys("cat, dog\ncar")
    click(browser, "#classify-form button")
    rows = wait_rows(browser, "#classify-output", 3)
    assert sorted(row[0] for row in rows) == ["car", "cat", "dog"]
    assert sum(row[1] for row in rows) == pytest.approx(100, abs=0.2)
    assert bar_widths(browser, "#classify-output .probability .bar")[0] > 0

    # A stored set: one table per group.
    browser.find_element(By.CSS_SELECTOR, "input[value=label_set]").click()
    click(browser, "#classify-form button")
    wait_for(browser, lambda: len(table_captions(browser, "#classify-output")) == 2)
    assert table_captions(browser, "#classify-output") == ["pets: type", "pets: fur"]

    # Ranking: one row per text, most probable first.
    click(browser, "#rank-form button")
    rows = wait_rows(browser, "#rank-output", 4)
    assert [row[1] for row in rows] == sorted((row[1] for row in rows), reverse=True)
    assert "random colourful noise" in [row[0] for row in rows]

    # Everything the page loaded came from the service (the CSP forbids anything else).
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name);"
    )
    assert loaded and all(url.startswith((f"{open_clip_url}/", "blob:")) for url in loaded)

    full_page_screenshot(browser, tmp_path / "ui.png")
    if target := os.environ.get("UI_SCREENSHOT"):
        shutil.copy(tmp_path / "ui.png", target)


def test_errors_are_readable(browser, open_clip_url, tmp_path):
    browser.get(f"{open_clip_url}/ui/")
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    browser.find_element(By.ID, "image-file").send_keys(str(not_an_image))

    # The service's own 400 message, shown as it is.
    click(browser, "#describe-form button[value=caption]")
    message = wait_text(browser, "#describe-error", bool)
    assert message.startswith("image.img_blob: not a readable image")

    browser.find_element(By.ID, "labels").clear()
    click(browser, "#classify-form button")
    assert wait_text(browser, "#classify-error", bool).startswith("labels: ")

    # No answer at all: the network failure is explained, not thrown.
    browser.set_network_conditions(
        offline=True, latency=0, download_throughput=0, upload_throughput=0
    )
    try:
        click(browser, "#rank-form button")
        message = wait_text(browser, "#rank-error", bool)
    finally:
        browser.delete_network_conditions()
    assert message.startswith("Could not reach the service at ")
    assert not browser.find_elements(By.CSS_SELECTOR, "#rank-output table")
    full_page_screenshot(browser, tmp_path / "errors.png")


def click(browser: WebDriver, selector: str) -> None:
    """Click once the button is enabled (the page disables it while a call runs)."""
    button = browser.find_element(By.CSS_SELECTOR, selector)
    wait_for(browser, button.is_enabled)
    button.click()


def wait_for(browser: WebDriver, condition) -> None:
    try:
        WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(lambda _: condition())
    except TimeoutException:
        errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error") if e.text]
        pytest.fail(f"page did not get there in {WAIT_S}s; messages shown: {errors}")


def wait_text(browser: WebDriver, selector: str, accept) -> str:
    """The element's text once ``accept`` takes it."""
    element = browser.find_element(By.CSS_SELECTOR, selector)
    wait_for(browser, lambda: accept(element.text))
    return element.text


def no_error(browser: WebDriver, selector: str) -> bool:
    return browser.find_element(By.CSS_SELECTOR, selector).text == ""


def table_captions(browser: WebDriver, selector: str) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((c) => c.innerText);",
        f"{selector} table caption",
    )


def wait_rows(browser: WebDriver, selector: str, count: int) -> list[tuple[str, float, float]]:
    """(label, probability in %, cosine) of each row of the one table under ``selector``.

    Read in one script call: the page replaces its tables, so element handles held across
    calls could go stale.
    """

    def cells() -> list[list[str]]:
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map((row) => [...row.cells].map((cell) => cell.innerText));",
            f"{selector} table tbody tr",
        )

    wait_for(browser, lambda: len(cells()) == count)
    return [
        (label, float(probability.removesuffix(" %")), float(cosine))
        for label, probability, cosine in cells()
    ]


def full_page_screenshot(browser: WebDriver, path: Path) -> None:
    """A PNG of the whole page: the viewport is stretched to the page for the shot."""
    width, height = browser.execute_script(
        "const root = document.documentElement; return [root.scrollWidth, root.scrollHeight];"
    )
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        assert browser.save_screenshot(str(path))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def bar_widths(browser: WebDriver, selector: str) -> list[float]:
    """Rendered widths of the bars, in CSS pixels."""
    return [bar.rect["width"] for bar in browser.find_elements(By.CSS_SELECTOR, selector)]
