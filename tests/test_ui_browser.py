"""The demo page /ui in a real headless Chromium, against a served instance on loopback.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
without them the test fails and says so rather than skipping. ``UI_SCREENSHOT=docs/ui.png``
also saves the final screenshot there (for docs/api.md), and
``UI_SEARCH_SCREENSHOT=docs/ui-search.png`` the search section with its results.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from clip_service.testing.tiny_captioners import make_florence2
from clip_service.testing.tiny_siglip import make_open_clip_siglip
from tests.conftest import (
    SEARCH_MAX_BODY,
    SEARCH_MAX_ITEMS,
    b64,
    image_bytes,
    make_image,
    served,
)

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


@pytest.fixture(scope="module")
def clip_only_url(clip_only_server) -> str:
    """A CLIP-only server (CAPTION_MODEL=none): the search needs nothing else."""
    return clip_only_server.url


@pytest.fixture(scope="module")
def search_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Generated images of several sizes and formats, written as files to choose."""
    directory = tmp_path_factory.mktemp("ui-search")
    paths = []
    for seed, size, fmt in [
        (1, (320, 240), "PNG"),
        (2, (240, 320), "JPEG"),
        (3, (200, 200), "PNG"),
        (4, (400, 225), "JPEG"),
    ]:
        path = directory / f"noise-{seed}.{fmt.lower()}"
        path.write_bytes(image_bytes(make_image(seed, size), fmt))
        paths.append(path)
    return paths


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


def test_search_ranks_images_like_the_api(browser, clip_only_url, search_images, tmp_path):
    browser.get(f"{clip_only_url}/ui/")
    wait_text(browser, "#model-info", lambda text: text.endswith(", CLIP only"))
    assert not browser.find_element(By.ID, "describe-section").is_displayed()

    # The keyboard reaches the file input (its drop zone shows the focus), the sentence and
    # the button, in that order; Enter with no images says what is missing.
    zone = browser.find_element(By.ID, "search-drop")
    assert zone.is_displayed() and "choose files" in zone.text
    browser.execute_script("document.activeElement.blur();")
    tab_to(browser, "search-files")
    outline = "return getComputedStyle(arguments[0]).outlineStyle;"
    assert browser.execute_script(outline, zone) == "solid"
    assert tab(browser) == "search-text"
    assert browser.switch_to.active_element.tag_name == "input"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert wait_text(browser, "#search-error", bool).startswith("Choose one or more images")
    assert tab(browser) == "search-button"

    choose_files(browser, search_images)
    wait_text(browser, "#search-chosen", lambda text: text.startswith("4 images chosen"))
    assert no_error(browser, "#search-error")  # a new choice clears the old message
    sentence = "a photo of a red car"
    box = browser.find_element(By.ID, "search-text")
    box.clear()
    box.send_keys(sentence, Keys.ENTER)  # typed, then submitted with the keyboard
    status = wait_text(browser, "#search-status", bool)
    results = search_results(browser)

    # The same ranking as POST /rank with the same sentence and images.
    body = {
        "queries": [{"text": sentence}],
        "candidates": [{"img_blob": b64(path.read_bytes())} for path in search_images],
    }
    answer = httpx.post(f"{clip_only_url}/rank", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    direct = {
        path.name: (probability, cosine)
        for path, probability, cosine in zip(
            search_images,
            answer.json()["probabilities"][0],
            answer.json()["cosine_similarities"][0],
            strict=True,
        )
    }
    expected = sorted(direct.values(), reverse=True)
    assert [rank for rank, *_ in results] == ["#1", "#2", "#3", "#4"]
    assert sorted(name for _, name, *_ in results) == sorted(direct)
    for (_, name, probability, cosine), best in zip(results, expected, strict=True):
        # In API order up to ties: each place holds the probability the API ranks there.
        assert probability == pytest.approx(best[0], abs=1e-4)
        assert probability == pytest.approx(direct[name][0], abs=1e-4)
        assert cosine == pytest.approx(direct[name][1], abs=1e-4)
    assert status == (
        f"4 images ranked for \u201c{sentence}\u201d. "
        f"Best match: {results[0][1]}, {results[0][2] * 100:.2f} %."
    )
    assert browser.execute_script(
        "return [...document.querySelectorAll('#search-output img')]"
        ".every((img) => img.complete && img.naturalWidth > 0);"
    )

    section = browser.find_element(By.ID, "search-section")
    browser.execute_script("arguments[0].scrollIntoView();", section)
    section.screenshot(str(tmp_path / "ui-search.png"))
    if target := os.environ.get("UI_SEARCH_SCREENSHOT"):
        shutil.copy(tmp_path / "ui-search.png", target)


def test_search_errors_are_readable(browser, clip_only_url, search_images, tmp_path):
    browser.get(f"{clip_only_url}/ui/")
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")

    # A file that is no image: the service's 400, with the file it is about.
    choose_files(browser, [search_images[0], not_an_image, search_images[1]])
    wait_text(browser, "#search-chosen", lambda text: text.startswith("3 images chosen"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#search-thumbs .no-preview")) == 1
    browser.find_element(By.ID, "search-text").send_keys(Keys.ENTER)
    message = wait_text(browser, "#search-error", bool)
    assert message.startswith("notes.txt: candidates[1].img_blob: not a readable image"), message
    assert not search_results(browser, wait=False)
    assert no_error(browser, "#search-status")

    # More images than the server takes (its MAX_ITEMS): its limit, shown as it is.
    many = []
    for seed in range(SEARCH_MAX_ITEMS + 1):
        many.append(tmp_path / f"small-{seed}.png")
        many[-1].write_bytes(image_bytes(make_image(seed, (32, 32))))
    choose_files(browser, many)
    count = SEARCH_MAX_ITEMS + 1
    wait_text(browser, "#search-chosen", lambda text: text.startswith(f"{count} images chosen"))
    browser.find_element(By.ID, "search-text").send_keys(Keys.ENTER)
    message = wait_text(browser, "#search-error", bool)
    expected = f"Too many images: this service ranks at most {SEARCH_MAX_ITEMS} at once "
    assert message.startswith(expected) and "(candidates: " in message, message
    assert not search_results(browser, wait=False)

    # A body over the server's MAX_BODY_BYTES (a 1.4 MB noise PNG, a third more in base64).
    large = tmp_path / "large.png"
    large.write_bytes(image_bytes(make_image(9, (800, 600))))
    assert large.stat().st_size > SEARCH_MAX_BODY
    choose_files(browser, [search_images[0], large])
    wait_text(browser, "#search-chosen", lambda text: text.startswith("2 images chosen"))
    browser.find_element(By.ID, "search-text").send_keys(Keys.ENTER)
    message = wait_text(browser, "#search-error", bool)
    expected = f"The images are too large to send together (body: larger than {SEARCH_MAX_BODY} "
    assert message.startswith(expected), message
    full_page_screenshot(browser, tmp_path / "search-errors.png")


def choose_files(browser: WebDriver, paths: list[Path]) -> None:
    """Choose files in the search's file input, as the file picker would (chromedriver adds
    files to a ``multiple`` input's earlier ones: cleared first, as a new pick replaces)."""
    field = browser.find_element(By.ID, "search-files")
    field.clear()
    field.send_keys("\n".join(str(path) for path in paths))


def tab(browser: WebDriver) -> str:
    """Press Tab; the id of the element that has the focus then."""
    ActionChains(browser).send_keys(Keys.TAB).perform()
    return browser.switch_to.active_element.get_attribute("id")


def tab_to(browser: WebDriver, element_id: str, most: int = 60) -> None:
    """Tab from where the focus is until ``element_id`` has it."""
    seen = []
    for _ in range(most):
        seen.append(tab(browser))
        if seen[-1] == element_id:
            return
    pytest.fail(f"Tab never reached #{element_id}; it went through {seen}")


def search_results(browser: WebDriver, wait: bool = True) -> list[tuple[str, str, float, float]]:
    """(rank, file name, probability, cosine) of each search result, best first."""

    def cards() -> list[list[str]]:
        return browser.execute_script(
            "return [...document.querySelectorAll('#search-output .result')].map((card) =>"
            " ['.rank', '.name', '.probability .value', '.cosine .value']"
            ".map((part) => card.querySelector(part).innerText));"
        )

    if wait:
        wait_for(browser, lambda: len(cards()) > 0)
    return [
        (rank, name, float(probability.removesuffix(" %")) / 100, float(cosine))
        for rank, name, probability, cosine in cards()
    ]


@pytest.fixture(scope="module")
def siglip_florence_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of a tiny SigLIP (open_clip format) with a tiny Florence-2 captioner."""
    models = tmp_path_factory.mktemp("siglip-florence")
    home = tmp_path_factory.mktemp("bentoml-siglip-florence")
    env = {
        "CLIP_MODEL": f"local-dir:{make_open_clip_siglip(models / 'siglip')}",
        "CAPTION_MODEL": str(make_florence2(models / "florence-2")),
        "LABEL_CACHE_DIR": str(home / "label-cache"),
    }
    with served(home, **env) as url:
        yield url


def test_caption_detail_levels_and_sigmoid_scores(browser, siglip_florence_url, picture):
    """The page offers the captioner's detail levels and sends the one chosen; with SigLIP
    it shows the model's own sigmoid scores, named as such (they need not sum to 100 %)."""
    url = siglip_florence_url
    browser.get(f"{url}/ui/")
    wait_text(browser, "#model-info", lambda text: "sigmoid scores (SigLIP)" in text)
    assert browser.find_element(By.ID, "caption-title").text == "Caption (florence-2)"
    detail = Select(browser.find_element(By.ID, "caption-detail"))
    assert [o.get_attribute("value") for o in detail.options] == [
        "brief",
        "detailed",
        "more_detailed",
    ]
    browser.find_element(By.ID, "image-file").send_keys(str(picture))
    wait_for(browser, lambda: browser.find_element(By.ID, "preview").is_displayed())
    item = {"img_blob": b64(picture.read_bytes())}
    for level in ("more_detailed", "brief"):
        detail.select_by_value(level)
        click(browser, "#describe-form button[value=caption]")
        expected = httpx.post(
            f"{url}/caption", json={"image": item, "caption_detail": level}, timeout=120
        ).json()["caption"]
        # As the page renders it: runs of white space as one (the tiny model's words).
        shown = " ".join(expected.split())
        wait_text(browser, "#caption-output", lambda text, e=shown: " ".join(text.split()) == e)

    labels = browser.find_element(By.ID, "labels")
    labels.clear()
    labels.send_keys("cat, dog\ncar")
    click(browser, "#classify-form button")
    rows = wait_rows(browser, "#classify-output", 3)
    header = browser.find_element(By.CSS_SELECTOR, "#classify-output th.score").text
    assert header == "sigmoid score (each label alone)"
    body = {"image": item, "labels": ["cat", "dog", "car"], "template": "a photo of a {}"}
    scores = httpx.post(f"{url}/classify", json=body, timeout=60).json()["scores"]
    served_scores = {s["label"]: round(s["probability"] * 100, 1) for s in scores}
    assert {row[0]: row[1] for row in rows} == served_scores
