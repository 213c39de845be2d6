"""Published label tables from a loopback stand-in for the Hub: valid, invalid, missing, slow.

The fake Hub answers ``/{repo}/resolve/{revision}/{file}`` with the headers huggingface_hub
needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``; for an LFS-style file a 302 to another
origin with ``X-Linked-Etag`` / ``X-Linked-Size``) and records every request, so each test
asserts that its requests reached loopback and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants, hf_hub_url
from safetensors.numpy import save

from clip_service.interrogation.hub_tables import REPO_ID, REVISION, fetch_table, published_name
from clip_service.interrogation.labels import LabelTable
from tests.conftest import REPO

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NAME = "ViT-L-14_openai"
TABLE = LabelTable.of("mediums", ["a painting", "a photograph", "a sculpture", "a drawing"])
# Spelled out rather than built from the module's constants, so a wrong URL fails the tests.
PATH = "/pharma/ci-preprocess/resolve/main/ViT-L-14_openai_mediums.safetensors"
LOGGER = "clip_service.interrogation.hub_tables"


def unit_rows(n: int, d: int = 8) -> np.ndarray:
    """Unit-norm rows rounded to float16, as 0.6.0 stores them."""
    rows = np.random.default_rng(n).standard_normal((n, d)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


EMBEDS = unit_rows(len(TABLE.labels))


def table_file(embeds: np.ndarray = EMBEDS, hash_hex: str = TABLE.hash) -> bytes:
    """0.6.0's cache-file recipe (``save_file`` of these two tensors), as bytes."""
    return save({"embeds": embeds, "hash": np.array([ord(c) for c in hash_hex], dtype=np.int8)})


class FakeHub:
    """A threading HTTP server on 127.0.0.1 answering as the Hub's ``/resolve/`` does."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cdn: str | None = None  # when set, files answer 302 to this origin, as LFS files do
        self.stall: set[str] = set()  # methods left unanswered until close()
        self.status: int | None = None  # answer everything with this bare status instead
        # How a missing file is answered: by default as the Hub does (404 + X-Error-Code).
        self.missing: tuple[int, str | None] = (404, "EntryNotFound")
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._released = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                hub._answer(self)

            def do_GET(self) -> None:
                hub._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        received = {key.lower(): value for key, value in handler.headers.items()}
        self.requests.append((handler.command, handler.path, received))
        if handler.command in self.stall:
            self._released.wait(30)
            return
        data = self.files.get(handler.path)
        headers = {"X-Repo-Commit": COMMIT}
        if self.status is not None:
            status, data = self.status, b""
        elif data is None:
            status, error_code = self.missing
            data = b""
            if error_code:
                headers["X-Error-Code"] = error_code
        elif self.cdn:
            status = 302
            headers["Location"] = self.cdn + handler.path
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
            data = b""
        else:
            status = 200
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()}"'
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(data)

    def seen(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method in (None, m)]

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache and no token; online unless a test says otherwise.

    Telemetry off: with it on, huggingface_hub also fetches ``/api/agent-harnesses`` from the
    endpoint once per process, which would make the request counts depend on test order.
    """
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    return cache


def point_hf_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point huggingface_hub at ``url`` as HF_ENDPOINT would: it reads the variable once, at
    import, into these two constants."""
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> Iterator[FakeHub]:
    server = FakeHub()
    point_hf_at(monkeypatch, server.url)
    yield server
    server.close()


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def only_record(caplog: pytest.LogCaptureFixture, level: int) -> str:
    """The one line fetch_table logged, checked for its level and the fallback it announces."""
    (record,) = records(caplog)
    assert record.levelno == level, record.getMessage()
    assert "building it locally" in record.getMessage()
    return record.getMessage()


def leftovers(cache: Path) -> list[Path]:
    """Files in the cache other than huggingface_hub's bookkeeping (locks, refs, tag)."""
    return [
        p
        for p in cache.rglob("*")
        if p.is_file() and not {".locks", "refs"} & set(p.parts) and p.name != "CACHEDIR.TAG"
    ]


# --- names and location ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ViT-L-14/openai", "ViT-L-14_openai"),
        ("ViT-L-14:openai", "ViT-L-14_openai"),
        (" ViT-B-32:openai ", "ViT-B-32_openai"),
        ("ViT-H-14/laion2b_s32b_b79k", "ViT-H-14_laion2b_s32b_b79k"),
        ("ViT-bigG-14:laion2b_s39b_b160k", "ViT-bigG-14_laion2b_s39b_b160k"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None),
        ("openai/clip-vit-large-patch14", None),
    ],
)
def test_published_name_is_the_librarys_sanitized_model_name(
    spec: str, expected: str | None
) -> None:
    assert published_name(spec) == expected


def test_local_directories_have_no_published_name(tmp_path: Path) -> None:
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    for spec in (f"local-dir:{tmp_path / 'oc'}", str(tmp_path / "oc"), str(tmp_path / "hf")):
        assert published_name(spec) is None, spec


def test_repository_is_the_one_the_library_downloads_from() -> None:
    from clip_interrogator.clip_interrogator import CACHE_URL_BASE

    filename = "ViT-L-14_openai_flavors.safetensors"
    url = hf_hub_url(REPO_ID, filename, revision=REVISION, endpoint="https://huggingface.co")
    assert url == CACHE_URL_BASE + filename


# --- downloads ------------------------------------------------------------------------------


def test_valid_file_is_returned_and_cached(
    hub: FakeHub, hf_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub.files[PATH] = table_file()
    with caplog.at_level(logging.INFO, LOGGER):
        embeds = fetch_table(NAME, TABLE, timeout_s=5)
    assert embeds is not None
    assert embeds.dtype == np.float16
    np.testing.assert_array_equal(embeds, EMBEDS)
    assert hub.seen("GET") == [PATH]
    assert [p.read_bytes() for p in leftovers(hf_cache)] == [hub.files[PATH]] * 2  # blob, link
    (record,) = records(caplog)
    assert record.levelno == logging.INFO and "using the published" in record.getMessage()


def test_lfs_redirect_to_another_origin_is_followed(hub: FakeHub) -> None:
    cdn = FakeHub()
    try:
        hub.files[PATH] = cdn.files[PATH] = table_file()
        hub.cdn = cdn.url
        embeds = fetch_table(NAME, TABLE, timeout_s=5)
    finally:
        cdn.close()
    assert embeds is not None
    np.testing.assert_array_equal(embeds, EMBEDS)
    assert cdn.seen("GET") == [PATH]
    assert hub.seen("GET") == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (table_file(hash_hex=hashlib.sha256(b"other labels").hexdigest()), "hash mismatch"),
        (table_file(hash_hex=TABLE.hash[:-1]), "hash mismatch"),
        (table_file(unit_rows(len(TABLE.labels) + 1)), "shape (5, 8) for 4 labels"),
        (table_file(EMBEDS.reshape(-1)), "shape (32,) for 4 labels"),
        (table_file(EMBEDS.astype(np.float32)), "float32, expected float16"),
        (table_file(np.where(np.eye(4, 8) > 0, np.nan, EMBEDS).astype(np.float16)), "non-finite"),
        (table_file(np.full((4, 8), np.inf, dtype=np.float16)), "non-finite"),
        (save({"embeds": EMBEDS}), "expected 'embeds' and 'hash'"),
        (table_file()[:-40], "unreadable"),
        (b"<html>Bad gateway</html>", "unreadable"),
    ],
    ids=[
        "other-hash",
        "short-hash",
        "row-count",
        "one-dimensional",
        "float32",
        "nan",
        "inf",
        "no-hash",
        "truncated",
        "garbage",
    ],
)
def test_invalid_file_is_rejected(
    hub: FakeHub, body: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub.files[PATH] = body
    assert fetch_table(NAME, TABLE, timeout_s=5) is None
    assert hub.seen("GET") == [PATH]  # downloaded, then refused
    assert problem in only_record(caplog, logging.WARNING)


def test_embedding_width_is_checked_when_known(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub.files[PATH] = table_file()
    assert fetch_table(NAME, TABLE, dim=8, timeout_s=5) is not None
    caplog.clear()
    assert fetch_table(NAME, TABLE, dim=768, timeout_s=5) is None
    assert "8 wide, the model's are 768" in only_record(caplog, logging.WARNING)


@pytest.mark.parametrize(
    "missing",
    [(404, "EntryNotFound"), (404, "RevisionNotFound"), (401, "RepoNotFound"), (404, None)],
    ids=["no-file", "no-revision", "no-repo", "bare-404"],
)
def test_unpublished_file_is_an_info_line(
    hub: FakeHub, missing: tuple[int, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    hub.missing = missing
    with caplog.at_level(logging.INFO, LOGGER):
        assert fetch_table(NAME, TABLE, timeout_s=5) is None
    assert hub.seen() == [PATH]  # one HEAD, nothing downloaded
    assert "not published" in only_record(caplog, logging.INFO)


def test_server_error_is_a_warning_without_retries(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub.status = 503
    assert fetch_table(NAME, TABLE, timeout_s=5) is None
    assert hub.seen() == [PATH]
    assert "503" in only_record(caplog, logging.WARNING)


def test_stalled_hub_is_given_up_after_the_timeout(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub.files[PATH] = table_file()
    hub.stall = {"HEAD", "GET"}
    assert fetch_table(NAME, TABLE, timeout_s=0.5) is None  # the stall never ends by itself
    assert hub.seen() == [PATH]
    assert "Timeout" in only_record(caplog, logging.WARNING)


@pytest.mark.slow  # huggingface_hub's own retries: ~6 s
def test_stalled_download_leaves_no_partial_file(
    hub: FakeHub, hf_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The body is read under huggingface_hub's own read timeout, which it retries 5 times
    # with a 1 s pause: this test takes ~6 s.
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.2)
    hub.files[PATH] = table_file()
    hub.stall = {"GET"}
    assert fetch_table(NAME, TABLE, timeout_s=5) is None
    assert hub.seen("GET")
    assert "ReadTimeout" in only_record(caplog, logging.WARNING)
    assert leftovers(hf_cache) == []


def test_unreachable_hub_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, hf_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = FakeHub()
    hub.close()  # nothing listens on its port any more
    point_hf_at(monkeypatch, hub.url)
    assert fetch_table(NAME, TABLE, timeout_s=5) is None
    assert "ConnectError" in only_record(caplog, logging.WARNING)


def test_offline_mode_sends_no_request(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hub.files[PATH] = table_file()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.INFO, LOGGER):
        assert fetch_table(NAME, TABLE, timeout_s=5) is None
    assert hub.requests == []
    assert "HF_HUB_OFFLINE" in only_record(caplog, logging.INFO)


@pytest.mark.parametrize("down", ["offline", "stalled"])
def test_cached_copy_is_used_when_the_hub_cannot_be_asked(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, down: str
) -> None:
    hub.files[PATH] = table_file()
    assert fetch_table(NAME, TABLE, timeout_s=5) is not None
    hub.requests.clear()
    if down == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        hub.stall = {"HEAD", "GET"}
    embeds = fetch_table(NAME, TABLE, timeout_s=0.5)
    assert embeds is not None
    np.testing.assert_array_equal(embeds, EMBEDS)
    assert hub.seen("GET") == []


def test_token_is_sent(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_loopback_test_token")
    hub.files[PATH] = table_file()
    assert fetch_table(NAME, TABLE, timeout_s=5) is not None
    auth = {headers.get("authorization") for _, _, headers in hub.requests}
    assert auth == {"Bearer hf_loopback_test_token"}


_CHILD = """
import json, sys
from clip_service.interrogation.hub_tables import fetch_table
from clip_service.interrogation.labels import LabelTable
embeds = fetch_table(sys.argv[1], LabelTable.of(*json.loads(sys.argv[2])), timeout_s=5)
print(json.dumps(None if embeds is None else embeds.tolist()))
"""


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_environment_variables_are_honoured(hub: FakeHub, tmp_path: Path, offline: bool) -> None:
    """HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE as a user sets them, in a fresh interpreter."""
    hub.files[PATH] = table_file()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for var in ("HF_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        env.pop(var, None)
    args = [NAME, json.dumps([TABLE.name, TABLE.labels])]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, cwd=REPO, capture_output=True, timeout=120
    )
    assert child.returncode == 0, child.stderr.decode()
    result = json.loads(child.stdout)
    if offline:
        assert result is None
        assert hub.requests == []
    else:
        np.testing.assert_array_equal(np.array(result, dtype=np.float16), EMBEDS)
        assert hub.seen("GET") == [PATH]
        assert list((tmp_path / "home" / "hub").glob("models--pharma--ci-preprocess/blobs/*"))
