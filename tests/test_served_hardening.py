"""Expensive or hostile requests on a served instance: timeouts and overload in the project's
shape, body and request-head deadlines over raw sockets, deep JSON, per-request cost caps,
and a SIGTERM that still stops a server with deep JSON requests in flight."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from clip_service.testing.hostile_corpus import error_message
from tests.conftest import (
    REPO,
    _wait_ready,
    b64,
    free_port,
    image_bytes,
    make_image,
    serve_env,
    served,
)
from tests.test_faults import worker
from tests.test_shutdown import _in_progress

pytestmark = pytest.mark.served

ORIGIN = "http://app.example"
TIMEOUT_S = 4  # REQUEST_TIMEOUT_S
BODY_S = 2  # BODY_READ_TIMEOUT_S
HEAD_S = 2  # HEADER_READ_TIMEOUT_S
MARGIN_S = 3  # scheduling slack on a busy 2-core machine
DEEP = b"[" * 50_000 + b"]" * 50_000  # ~100 KB
IMAGE = {"img_blob": b64(image_bytes(make_image(5, (64, 64))))}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory) -> Iterator[tuple[str, object]]:
    home = tmp_path_factory.mktemp("bentoml-hardening")
    with served(
        home,
        CLIP_MODEL=str(tiny_models["hf-clip"]),
        CAPTION_MODEL=str(tiny_models["blip"]),
        CORS_ALLOW_ORIGINS=ORIGIN,
        REQUEST_TIMEOUT_S=str(TIMEOUT_S),
        MAX_CONCURRENCY="2",
        BODY_READ_TIMEOUT_S=str(BODY_S),
        HEADER_READ_TIMEOUT_S=str(HEAD_S),
        READINESS_TIMEOUT_S="1",
        MAX_RANK_PAIRS="6",
        MAX_CLASSIFY_CHARS="40",
        MAX_URL_ITEMS="2",
    ) as url:
        yield url, home


@pytest.fixture(scope="module")
def url(server) -> str:
    return server[0]


def assert_shaped(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": message}
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["retry-after"] == "5"


def test_timeouts_overload_and_outages_answer_in_the_error_shape_with_cors(url):
    encoder = worker(url, "ClipEncoder")
    encoder.suspend()  # every encoder call now hangs: requests run into the deadline
    try:
        answers: list[tuple[float, httpx.Response]] = []

        def stuck() -> None:
            started = time.monotonic()
            response = httpx.post(
                f"{url}/encode", json=[{"text": "a cat"}], headers={"origin": ORIGIN}, timeout=60
            )
            answers.append((time.monotonic() - started, response))

        threads = [threading.Thread(target=stuck) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while _in_progress(url, "/encode") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

        third = httpx.post(f"{url}/encode", json=[{"text": "x"}], headers={"origin": ORIGIN})
        assert_shaped(third, 429, "too many requests: 2 already in flight; retry after 5 s")
        ready = httpx.get(f"{url}/readyz", headers={"origin": ORIGIN}, timeout=10)
        assert ready.status_code == 503 and ready.json()["error"].startswith("service unavail")
        assert_shaped(ready, 503, ready.json()["error"])

        for thread in threads:
            thread.join(60)
        for elapsed, response in answers:
            message = f"timeout: no answer within {TIMEOUT_S} s; retry after 5 s"
            assert_shaped(response, 504, message)
            assert TIMEOUT_S <= elapsed < TIMEOUT_S + MARGIN_S  # ours, not BentoML's backstop
    finally:
        encoder.resume()
    assert httpx.post(f"{url}/encode", json=[{"text": "x"}], timeout=60).status_code == 200


def raw_exchange(
    url: str, steps: list[tuple[bytes, float]], wait_s: float, stop_when_answered: bool = False
) -> tuple[bytes, float]:
    """Send each chunk after its pause on one connection, then read until the server closes
    it; (everything received, seconds from the first byte to the close). A server that closes
    while chunks are still being sent ends the sending; with ``stop_when_answered`` so does
    the first byte of an answer (sending on after the server has closed would draw a reset,
    which discards what it sent and the client has not yet read)."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port))) as sock:
        started = time.monotonic()
        sock.settimeout(wait_s)
        try:
            for chunk, pause in steps:
                time.sleep(pause)
                sock.sendall(chunk)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    if not (got := sock.recv(65536)):
                        return received, time.monotonic() - started
                    received += got
                sock.settimeout(wait_s)
                if received and stop_when_answered:
                    break
            while got := sock.recv(65536):
                received += got
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TimeoutError:
            return received, float("inf")  # still open
        return received, time.monotonic() - started


HEAD = (
    b"POST /encode HTTP/1.1\r\nHost: test\r\nOrigin: " + ORIGIN.encode() + b"\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
)


@pytest.mark.parametrize(
    "steps",
    [[(HEAD + b'[{"text"', 0)], [(HEAD, 0)] + [(b" ", 0.25)] * 40],
    ids=["stalled", "trickled"],
)
def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes(url, steps):
    received, closed_after = raw_exchange(url, steps, BODY_S + 10, stop_when_answered=True)
    assert BODY_S <= closed_after < BODY_S + MARGIN_S
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nconnection: close" in head.lower()
    assert b"access-control-allow-origin: " + ORIGIN.encode() in head.lower()
    assert json.loads(body) == {"error": f"body: not received within {BODY_S} s"}


REQUEST = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.mark.parametrize(
    ("steps", "answers"),
    [
        ([(b"", 0)], 0),  # connects and says nothing
        ([(b"GET /livez HTTP/1.1\r\n", 0)], 0),  # half a head, then nothing
        ([(byte, 0.2) for byte in REQUEST[:-2]], 0),  # a head one byte at a time
        ([(REQUEST, 0), (b"GET /li", 0.2), (b"v", 0.5)] + [(b"e", 0.5)] * 8, 1),  # after an answer
    ],
    ids=["silent", "partial", "trickled", "after-an-answer"],
)
def test_a_request_head_that_does_not_arrive_in_time_closes_the_connection(url, steps, answers):
    steps = [(bytes([c]) if isinstance(c, int) else c, pause) for c, pause in steps]
    received, closed_after = raw_exchange(url, steps, wait_s=HEAD_S + 10)
    assert received.count(b"HTTP/1.1 200 ") == answers
    assert closed_after < HEAD_S + MARGIN_S + (0.5 if answers else 0), received
    assert closed_after >= HEAD_S - 0.5  # the server's clock starts when it accepts


def test_keep_alive_requests_are_served_within_the_deadline(url):
    # Two requests one after the other on one connection, each head sent in time.
    received, _ = raw_exchange(url, [(REQUEST, 0), (REQUEST, 0.5)], wait_s=HEAD_S + 10)
    assert received.count(b"HTTP/1.1 200 ") == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/encode", DEEP),
        ("/encode", b'{"a":' * 40 + b"1" + b"}" * 40),
        ("/rank", b'{"queries": ' + b"[" * 33 + b"]" * 33 + b', "candidates": []}'),
        ("/v1/embeddings", b'{"input": ' + DEEP + b"}"),
    ],
)
def test_deeply_nested_json_is_refused_before_parsing(url, path, body):
    started = time.monotonic()
    response = httpx.post(
        f"{url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert time.monotonic() - started < 2
    assert response.status_code == 400
    message = error_message(response.json(), path)
    assert message == "body: JSON nested deeper than 32 levels"


def test_brackets_inside_strings_do_not_count(url):
    texts = [{"text": "[" * 100}, {"text": '\\"{{{' + "]" * 100}]
    response = httpx.post(f"{url}/encode", json=texts, timeout=60)
    assert response.status_code == 200, response.text
    raw = httpx.post(f"{url}/vectorize", content=b"[" * 1000, timeout=30)  # not JSON: an image
    assert raw.status_code == 400 and "nested" not in raw.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/interrogate",
            {"image": IMAGE, "max_flavors": 49},
            "max_flavors: Input should be less than or equal to 48",
        ),
        (
            "/interrogate",
            {"image": IMAGE, "min_flavors": 49},
            "min_flavors: Input should be less than or equal to 48",
        ),
        (
            "/rank",
            {"queries": [{"text": "a"}] * 3, "candidates": [{"text": "b"}] * 3},
            "candidates: 3 queries x 3 candidates = 9 pairs, more than the limit of 6 "
            "(MAX_RANK_PAIRS)",
        ),
        (
            "/classify",
            {"image": IMAGE, "labels": ["cat", "dog", "cow"], "template": "a nice photo of a {}"},
            "labels: 3 labels in the template make 63 characters to encode, more than the limit "
            "of 40 (MAX_CLASSIFY_CHARS)",
        ),
    ],
)
def test_costly_requests_are_refused_naming_the_field(url, path, body, message):
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": message}


# Loopback URLs: never fetched (the private-address guard refuses them), so a broken count
# check cannot reach the network either.
URL = {"img_uri": "http://127.0.0.1:9/x.png"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/encode", [URL, {"text": "a"}, URL, URL], "items"),
        ("/rank", {"queries": [URL, URL], "candidates": [URL]}, "queries, candidates"),
        ("/v1/embeddings", {"input": [URL["img_uri"]] * 3, "modality": "image"}, "input"),
    ],
)
def test_img_uri_items_per_request_are_bounded(url, path, body, field):
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    assert response.status_code == 400
    assert error_message(response.json(), path) == (
        f"{field}: 3 img_uri items, more than the limit of 2 (MAX_URL_ITEMS); "
        "send more images as img_blob"
    )
    within = httpx.post(f"{url}/encode", json=[URL, URL], timeout=30)
    assert re.match(r"items\[[01]\]\.img_uri: refused: 127\.0\.0\.1", within.json()["error"])


def test_requests_within_the_caps_are_served(url):
    rank = {"queries": [{"text": "a"}] * 2, "candidates": [{"text": "b"}] * 3}
    assert httpx.post(f"{url}/rank", json=rank, timeout=60).status_code == 200
    classify = {"image": IMAGE, "labels": ["cat", "dog"], "template": "a photo of a {}"}
    assert httpx.post(f"{url}/classify", json=classify, timeout=60).status_code == 200
    spec = httpx.get(f"{url}/docs.json").json()
    fields = spec["components"]["schemas"]["interrogate__Input"]["properties"]
    assert fields["min_flavors"]["maximum"] == 48
    assert json.dumps(fields["max_flavors"]).count('"maximum": 48') == 1


def test_no_open_server_warning_on_loopback(server):
    log = "".join(path.read_text() for path in server[1].glob("serve-*.log"))
    assert "Starting production HTTP BentoServer" in log
    assert "no API keys set" not in log


def test_sigterm_stops_a_server_with_deep_json_requests_in_flight(tiny_models, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env(
        tmp_path, CLIP_MODEL=str(tiny_models["hf-clip"]), CAPTION_MODEL=str(tiny_models["blip"])
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        tree: list[psutil.Process] = []
        try:
            _wait_ready(url, process, 180, str(log))
            root = psutil.Process(process.pid)
            tree = [root, *root.children(recursive=True)]
            _check_stops(url, process, tree)
        finally:
            if process.poll() is None:
                process.kill()
            for member in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()


def _check_stops(url: str, process: subprocess.Popen, tree: list[psutil.Process]) -> None:
    """Deep bodies half sent when SIGTERM arrives, the rest sent after it: every one is
    answered, and the whole process tree is gone soon after."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        b"POST /encode HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(DEEP)
    )
    sockets = [socket.create_connection((host, int(port))) for _ in range(4)]
    for sock in sockets:
        sock.sendall(head + DEEP[: len(DEEP) // 2])
    os.kill(process.pid, signal.SIGTERM)
    time.sleep(1)
    answers = []
    for sock in sockets:
        with sock:
            sock.settimeout(60)
            sock.sendall(DEEP[len(DEEP) // 2 :])
            answers.append(sock.recv(65536))
    assert all(answer.startswith(b"HTTP/1.1 400 ") for answer in answers), answers
    assert process.wait(60) == 0
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"still running after SIGTERM: {alive}"
