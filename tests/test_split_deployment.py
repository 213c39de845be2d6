"""Split deployment: the entry service and each model service as separate `bentoml serve`
servers on separate hosts, wired by ``CLIP_ENCODER_URL`` / ``CAPTIONER_URL``.

Each model server runs in its own network namespace, linked to the test's by a veth pair
(a host with its own address); without ``ip netns`` (not root, no iproute2) they run on
loopback ports and a cut link is simulated by stopping the server (SIGSTOP). Checked:
batching across callers still happens in the encoder, a cut link gives 5xx JSON errors
within the entry's timeout, and the service recovers on its own when the link returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest

from tests.conftest import (
    REPO,
    _wait_ready,
    b64,
    copy_label_tables,
    free_port,
    image_bytes,
    make_image,
    metric_total,
    serve_env,
)

pytestmark = pytest.mark.served

ENTRY_TIMEOUT_S = 20
MODEL_PORT = 3000
HEADER_READ_TIMEOUT_S = 3  # the model services' (the combined server's default is 10)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _netns_usable() -> bool:
    if not shutil.which("ip") or os.geteuid() != 0:
        return False
    probe = f"csprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError:
        return False
    _ip("netns", "del", probe)
    return True


@dataclass
class Host:
    """Where a model server runs, and how to cut and restore the link to it."""

    address: str
    prefix: list[str]  # command prefix that runs a program on that host
    veth: str | None = None
    process: subprocess.Popen | None = None

    def cut(self) -> None:
        if self.veth:
            _ip("link", "set", self.veth, "down")
        else:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def restore(self) -> None:
        if self.veth:
            _ip("link", "set", self.veth, "up")
        else:
            os.killpg(self.process.pid, signal.SIGCONT)


@contextlib.contextmanager
def host(index: int, use_netns: bool) -> Iterator[Host]:
    """A network namespace with a veth pair to this one (10.x.y.2, reached from 10.x.y.1)."""
    if not use_netns:
        yield Host("127.0.0.1", [])
        return
    name = f"cs{os.getpid()}h{index}"
    outside, inside = f"{name}a", f"{name}b"
    subnet = f"10.{200 + index}.{os.getpid() % 250}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("addr", "add", f"{subnet}.1/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", name, "addr", "add", f"{subnet}.2/30", "dev", inside)
        _ip("-n", name, "link", "set", inside, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Host(f"{subnet}.2", ["ip", "netns", "exec", name], veth=outside)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", outside)
        _ip("netns", "del", name)


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def wait_ready(self) -> None:
        _wait_ready(self.url, self.process, 300, str(self.log))


@contextlib.contextmanager
def server(
    prefix: list[str], target: str, address: str, port: int, home: Path, **env: str
) -> Iterator[Server]:
    """`bentoml serve target` on ``address:port``, started and stopped."""
    # A home of its own, as on a host of its own: each server clears its metrics directory.
    home = home / target.replace(":", "_")
    home.mkdir()
    log_path = home / "serve.log"
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", address]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*prefix, *command, "--port", str(port)],
            cwd=REPO,
            env=serve_env(home, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield Server(process, f"http://{address}:{port}", log_path)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Split:
    entry: str
    encoder: str
    encoder_host: Host
    encoder_log: Path


@pytest.fixture(scope="module")
def split(tiny_models, tmp_path_factory, open_clip_server) -> Iterator[Split]:
    home = tmp_path_factory.mktemp("bentoml-split")
    models = {
        "CLIP_MODEL": f"local-dir:{tiny_models['open-clip']}",
        "CAPTION_MODEL": str(tiny_models["blip"]),
        # The session server's tables: the encoder loads them in seconds instead of encoding
        # them for a minute while the entry starts and the tests run.
        "LABEL_CACHE_DIR": str(copy_label_tables(open_clip_server, home / "label-cache")),
    }
    use_netns = _netns_usable()
    with contextlib.ExitStack() as stack:
        hosts = [stack.enter_context(host(i, use_netns)) for i in (1, 2)]
        ports = [MODEL_PORT if use_netns else free_port() for _ in hosts]
        urls = [f"http://{h.address}:{p}" for h, p in zip(hosts, ports, strict=True)]
        targets = ["runners.clip_encoder:ClipEncoder", "runners.blip_captioner:BlipCaptioner"]
        guards = {"HEADER_READ_TIMEOUT_S": str(HEADER_READ_TIMEOUT_S)}
        servers = [
            stack.enter_context(server(h.prefix, target, h.address, port, home, **models, **guards))
            for h, target, port in zip(hosts, targets, ports, strict=True)
        ]
        for h, started in zip(hosts, servers, strict=True):  # started together, loaded in parallel
            started.wait_ready()
            h.process = started.process
        entry_port = free_port()
        entry = stack.enter_context(
            server(
                [],
                "service:ClipApi",
                "127.0.0.1",
                entry_port,
                home,
                **models,
                CLIP_ENCODER_URL=urls[0],
                CAPTIONER_URL=urls[1],
                REQUEST_TIMEOUT_S=str(ENTRY_TIMEOUT_S),
            )
        )
        entry.wait_ready()
        yield Split(f"http://127.0.0.1:{entry_port}", urls[0], hosts[0], servers[0].log)


def _encode_images_batches(encoder_url: str) -> tuple[float, float]:
    """(batches, batches of one request) of the encoder's encode_images, from its /metrics."""
    text = httpx.get(f"{encoder_url}/metrics", timeout=10).text
    name = "clip_service_batch_size"
    count = metric_total(text, f"{name}_count", method="encode_images")
    return count, metric_total(text, f"{name}_bucket", method="encode_images", le="1.0")


async def _burst(url: str, bodies: list[bytes]) -> list[tuple[int, dict]]:
    timeout = aiohttp.ClientTimeout(total=ENTRY_TIMEOUT_S + 10)
    async with aiohttp.ClientSession() as session:

        async def one(body: bytes) -> tuple[int, dict]:
            async with session.post(f"{url}/vectorize", data=body, timeout=timeout) as r:
                return r.status, await r.json()

        return await asyncio.gather(*(one(body) for body in bodies))


def test_batching_still_happens_across_callers(split):
    before, before_ones = _encode_images_batches(split.encoder)
    bodies = [image_bytes(make_image(300 + i, (64, 64))) for i in range(32)]
    results = asyncio.run(_burst(split.entry, bodies))
    assert [status for status, _ in results] == [200] * 32, results
    after, after_ones = _encode_images_batches(split.encoder)
    batches, singles = after - before, after_ones - before_ones
    assert 0 < batches < 32 and singles < batches, (batches, singles)


def test_cut_link_gives_clean_5xx_and_service_recovers(split):
    body = image_bytes(make_image(400, (64, 64)))
    assert httpx.post(f"{split.entry}/vectorize", content=body, timeout=60).status_code == 200
    split.encoder_host.cut()
    try:
        start = time.monotonic()
        results = asyncio.run(_burst(split.entry, [body] * 4))
        elapsed = time.monotonic() - start
        for status, answer in results:
            assert status in (503, 504) and answer["error"], (status, answer)
        assert elapsed < ENTRY_TIMEOUT_S + 5
        print(f"link cut: {sorted(s for s, _ in results)} in {elapsed:.1f} s")
        ready = httpx.get(f"{split.entry}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["Retry-After"]
    finally:
        split.encoder_host.restore()
    restored = time.monotonic()
    while time.monotonic() - restored < 120:
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(f"{split.entry}/readyz", timeout=10).status_code == 200
            if (
                ready
                and httpx.post(f"{split.entry}/vectorize", content=body, timeout=60).is_success
            ):
                print(f"served again {time.monotonic() - restored:.1f} s after the link returned")
                return
        time.sleep(0.5)
    raise AssertionError("the entry did not recover after the link returned")


def test_a_model_service_served_alone_has_the_guards(split):
    """`bentoml serve runners.clip_encoder:ClipEncoder` installs what the combined server
    does: the request-head deadline closes a connection whose head never ends, and the
    project's log lines (the label tables') reach its log."""
    encoder = urlsplit(split.encoder)
    with socket.create_connection((encoder.hostname, encoder.port), timeout=30) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: encoder\r\n")  # no blank line: unfinished
        start = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        held = time.monotonic() - start
    assert HEADER_READ_TIMEOUT_S - 0.5 < held < HEADER_READ_TIMEOUT_S + 5, (held, answer)
    assert b"200 OK" not in answer
    deadline = time.monotonic() + 300
    while "label tables ready" not in split.encoder_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the encoder logged no clip_service lines"
        time.sleep(1)


def test_interrogation_crosses_the_split_services(split):
    """The interrogation request object (PromptRequest) travels as JSON between hosts."""
    deadline = time.monotonic() + 300
    while (
        httpx.get(f"{split.entry}/model", timeout=30).json()["interrogation"]["label_tables"][
            "state"
        ]
        != "ready"
    ):
        assert time.monotonic() < deadline, "label tables not ready"
        time.sleep(1)
    image = {"img_blob": b64(image_bytes(make_image(401, (64, 64))))}
    for body in ({"mode": "fast"}, {"mode": "classic", "caption": "a given caption"}):
        answer = httpx.post(
            f"{split.entry}/interrogate", json={"image": image, **body}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["prompt"] and answer.json()["mode"] == body["mode"]
    assert answer.json()["prompt"].startswith("a given caption")
