"""Shared fixtures: generated tiny models and real `bentoml serve` subprocesses on loopback."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from safetensors import safe_open
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from starlette.testclient import TestClient

from clip_service.interrogation.labels import TABLE_NAMES
from clip_service.testing.images import image_bytes, make_image
from clip_service.testing.tiny_models import make_all

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def pillow_limit_restored() -> Iterator[None]:
    """``decode_image`` sets Pillow's process-wide ``MAX_IMAGE_PIXELS`` (a server's one
    decode limit); a test's small limit must not reach the tests after it."""
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_all(tmp_path_factory.mktemp("models"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def served_label_tables(cache_dir: Path) -> list[tuple[str, str, np.ndarray]]:
    """The built-in tables a server wrote into its LABEL_CACHE_DIR, for
    :func:`write_library_cache`."""
    found = []
    for path in builtin_table_files(cache_dir):
        with safe_open(path, framework="np") as f:
            meta = f.metadata()
            found.append((meta["table"], meta["hash"], f.get_tensor("embeds")))
    return found


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus exposition's samples named ``name`` with these labels."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_env(tmp_home: Path, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "BENTOML_HOME": str(tmp_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        # Tests stop servers with SIGTERM; a short drain keeps teardown quick.
        "SHUTDOWN_QUIET_S": "1",
        # One ONNX export per tiny model for the whole session (keyed by weights).
        "ONNX_CACHE_DIR": str(tmp_home.parent / "onnx-cache"),
        # The server's own files, never the user's.
        "JOBS_DB": str(tmp_home / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(tmp_home / "label-lists"),
        **env,
    }


@contextmanager
def in_process_entry(env: dict[str, str]) -> Iterator[TestClient]:
    """The entry service (``ClipApi``) in this process with ``env`` set, its lifespan run.
    service.py reads its settings when first imported: one such app per test process."""
    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    os.environ.update(env)
    from clip_service.settings import get_settings

    get_settings.cache_clear()
    from service import ClipApi

    try:
        with TestClient(ClipApi.to_asgi()) as test_client:
            yield test_client
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        get_settings.cache_clear()
        torch.set_num_threads(saved_threads)  # the entry sets one thread for itself


@contextmanager
def served(tmp_home: Path, timeout_s: float = 180, **env: str) -> Iterator[str]:
    """Run `bentoml serve` for the repository's bentofile on 127.0.0.1; yield its URL."""
    port = free_port()
    log = (tmp_home / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=serve_env(tmp_home, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, timeout_s, log.name)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float, log: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{Path(log).read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s}s:\n{Path(log).read_text()}")


def wait_for_label_tables(url: str, timeout_s: float = 300) -> dict:
    """The server's built-in label tables status once ready (they build after /readyz)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tables = httpx.get(f"{url}/model", timeout=30).json()["interrogation"]["label_tables"]
        if tables["state"] == "ready":
            return tables
        time.sleep(1)
    raise AssertionError(f"label tables not ready after {timeout_s} s: {tables}")


@dataclass(frozen=True)
class Server:
    """A served instance: its URL, its BENTOML_HOME (its log files) and LABEL_CACHE_DIR."""

    url: str
    home: Path
    label_cache: Path

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.home.glob("serve-*.log")))


def open_clip_env(tiny_models: dict[str, Path], label_cache: Path) -> dict[str, str]:
    """The session server's models and label cache: a server started with these again
    loads its tables instead of building them."""
    return {
        "CLIP_MODEL": f"local-dir:{tiny_models['open-clip']}",
        "CAPTION_MODEL": str(tiny_models["blip"]),
        "LABEL_CACHE_DIR": str(label_cache),
        # The extension's default model name, mapped to the served one for its clients
        # (tests/test_sd_webui_api.py).
        "CLIP_MODEL_ALIASES": "ViT-L-14/openai",
    }


def builtin_table_files(cache_dir: Path) -> list[Path]:
    """The built-in label tables' files in a LABEL_CACHE_DIR (custom tables' embeddings,
    which tests on the same server add, are stored beside them)."""
    found = []
    for path in sorted(cache_dir.glob("*.safetensors")):
        with safe_open(path, framework="np") as f:
            if f.metadata()["table"] in TABLE_NAMES:
                found.append(path)
    return found


def copy_label_tables(server: Server, directory: Path) -> Path:
    """The session server's built-in label tables copied into ``directory`` (a new
    LABEL_CACHE_DIR): a server on the same models then loads them in seconds instead of
    encoding them for minutes, where a test needs the tables but not their build."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in builtin_table_files(server.label_cache):
        shutil.copy2(path, directory / path.name)
    return directory


@pytest.fixture(scope="session")
def open_clip_server(tiny_models, tmp_path_factory) -> Iterator[Server]:
    """The session's open_clip server, with its label tables built (into its own
    LABEL_CACHE_DIR, never the user's ~/.cache)."""
    home = tmp_path_factory.mktemp("bentoml-open-clip")
    label_cache = home / "label-cache"
    with served(home, **open_clip_env(tiny_models, label_cache)) as url:
        # Its tests interrogate: before the tables are built that is a 503 by design.
        wait_for_label_tables(url)
        yield Server(url, home, label_cache)


@pytest.fixture(scope="session")
def open_clip_url(open_clip_server) -> str:
    return open_clip_server.url


@dataclass(frozen=True)
class Restarted:
    """A second server on the session server's models and label cache, started once that
    one had built its tables; the cache files' modification times just before it started."""

    server: Server
    files_before: dict[Path, int]


@pytest.fixture(scope="session")
def open_clip_restarted(open_clip_server, tiny_models, tmp_path_factory) -> Iterator[Restarted]:
    home = tmp_path_factory.mktemp("bentoml-restarted")
    cache = open_clip_server.label_cache
    before = {p: p.stat().st_mtime_ns for p in builtin_table_files(cache)}
    with served(home, **open_clip_env(tiny_models, cache)) as url:
        yield Restarted(Server(url, home, cache), before)


# The CLIP-only server's limits (tests/test_ui_browser.py's search reaches them).
SEARCH_MAX_ITEMS = 6  # MAX_ITEMS of the CLIP-only server: a few more images are refused
SEARCH_MAX_BODY = 1024 * 1024  # its MAX_BODY_BYTES: one large image is refused


@pytest.fixture(scope="session")
def clip_only_server(tiny_models, tmp_path_factory) -> Iterator[Server]:
    """A CLIP-only server (CAPTION_MODEL=none), with small MAX_ITEMS and MAX_BODY_BYTES for
    the demo page's search; its LABEL_CACHE_DIR must stay unwritten. It runs with the
    shipped BentoML configuration, as docs/configuration.md says to serve
    (tests/test_startup.py checks that it was applied)."""
    home = tmp_path_factory.mktemp("bentoml-clip-only")
    label_cache = home / "label-cache"
    env = {
        "BENTOML_CONFIG": "configuration.yaml",
        "CLIP_MODEL": f"local-dir:{tiny_models['open-clip']}",
        "CAPTION_MODEL": "none",
        "LABEL_CACHE_DIR": str(label_cache),
        "MAX_ITEMS": str(SEARCH_MAX_ITEMS),
        "MAX_BODY_BYTES": str(SEARCH_MAX_BODY),
    }
    with served(home, **env) as url:
        yield Server(url, home, label_cache)


@pytest.fixture(scope="session")
def hf_url(tiny_models, tmp_path_factory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("bentoml-hf")
    clip = str(tiny_models["hf-clip"])
    with served(home, CLIP_MODEL=clip, CAPTION_MODEL=str(tiny_models["blip"])) as url:
        yield url


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    """A loopback HTTP server with one PNG at /image.png; yields its base URL."""
    import http.server
    import threading

    body = image_bytes(make_image(42, (64, 64)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/image.png"
            self.send_response(200 if found else 404)
            self.send_header("content-length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install -y chromium chromium-driver (Debian; .ci/run does this)"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1280,1400",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Debian Chromium with a fresh profile, driven by its own chromedriver."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found; install with: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # A Service with a driver path keeps Selenium Manager (which downloads drivers) out.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
