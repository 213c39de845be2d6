"""The clip-service command: errors, warm-cache -> serve, encode-dir, build with label caches.

Commands run in this process (click's runner) except `serve` and `build`, which need
processes of their own: starting one costs tens of seconds of imports on a loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result

from clip_service.cli.main import main
from tests.conftest import REPO, b64, free_port, image_bytes, make_image, serve_env

pytestmark = pytest.mark.served


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def spec(tiny_models) -> str:
    return f"local-dir:{tiny_models['open-clip']}"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def warm_dir(spec, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("warm")
    out = ok(cli("warm-cache", "--model-name", spec, "--label-cache-dir", directory))
    assert "6 built, 0 downloaded, 0 already there" in out
    return directory


@pytest.fixture(scope="module")
def server(spec, tiny_models, warm_dir, home) -> Iterator[str]:
    """`clip-service serve` with the warmed label caches."""
    port = free_port()
    log = (home / "cli-serve.log").open("wb")
    command = [sys.executable, "-m", "clip_service.cli.main", "serve", "--model-name", spec]
    command += ["--caption-model", tiny_models["blip"], "--label-cache-dir", warm_dir]
    command += ["--host", "127.0.0.1", "--port", port]
    process = subprocess.Popen(
        list(map(str, command)), cwd=REPO, env=serve_env(home), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not _ready(url):
            assert process.poll() is None and time.monotonic() < deadline, log.name
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i in range(5):
        make_image(i, (80, 60)).save(root / f"{i}.png")
    make_image(9, (70, 50)).save(root / "sub" / "x.jpg")
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not an image either")
    return root


def test_warm_cache_is_what_the_server_loads(server, warm_dir, home):
    mtimes = {p: p.stat().st_mtime_ns for p in warm_dir.glob("*.safetensors")}
    body = {"image": {"img_blob": b64(image_bytes(make_image(1)))}, "top_k": 2}
    response = httpx.post(f"{server}/analyze", json=body, timeout=600)
    assert response.status_code == 200, response.text
    log = (home / "cli-serve.log").read_text()
    assert log.count("label table") >= 6 and "Preprocessing" not in log
    assert {p: p.stat().st_mtime_ns for p in warm_dir.glob("*.safetensors")} == mtimes


def test_encode_dir_matches_the_server(server, spec, images, tmp_path):
    local, remote = tmp_path / "local.npy", tmp_path / "remote.npy"
    out = ok(cli("encode-dir", images, "--out", local, "--model-name", spec))
    assert "6 encoded, 0 already there, 1 skipped" in out
    ok(cli("encode-dir", images, "--out", remote, "--server", server, "--batch-size", 4))
    names = local.with_suffix(".files.txt").read_text().splitlines()
    assert names == remote.with_suffix(".files.txt").read_text().splitlines()
    assert names == ["0.png", "1.png", "2.png", "3.png", "4.png", "sub/x.jpg"]
    a, b = np.load(local), np.load(remote)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == (6, 32) and cosines.min() >= 0.9999
    assert json.loads(remote.with_suffix(".json").read_text()) == {"model": spec}


def test_encode_dir_resumes_after_an_interruption(spec, images, tmp_path):
    out = tmp_path / "v.npy"
    ok(cli("encode-dir", images, "--out", out, "--model-name", spec))
    full = np.load(out)
    # As if killed mid-batch: 3 names listed, a 4th row and half a 5th row written.
    listing = out.with_suffix(".files.txt")
    listing.write_text("".join(line + "\n" for line in listing.read_text().splitlines()[:3]))
    np.save(out, full[:4])
    with out.open("ab") as f:
        f.write(full[4].tobytes()[:50])
    again = ok(cli("encode-dir", images, "--out", out, "--model-name", spec))
    assert "3 encoded, 3 already there" in again
    assert np.allclose(np.load(out), full, atol=1e-6)
    assert len(listing.read_text().splitlines()) == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["warm-cache", "--model-name", "not a model"], "not an open_clip"),
        (["serve", "--model-name", "ViT-B-32:nope"], "no pretrained tag 'nope'"),
        (["encode-dir", "/no/such/dir", "--out", "x.npy"], "/no/such/dir: no such directory"),
        (["encode-dir", ".", "--out", "x.npy", "--server", "http://127.0.0.1:9"], "cannot reach"),
        (["build", "--project-dir", REPO, "--caption-model", "blip-xxl"], "not a caption model"),
    ],
)
def test_errors_are_one_line(args, message):
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_list_models():
    out = ok(cli("list-models"))
    assert "ViT-B-32:openai" in out and "ViT-L-14:openai" in out
    assert "blip-large (Salesforce/blip-image-captioning-large)" in out
    assert "openai/clip-vit-large-patch14" in out
    assert "blip2-2.7b (Salesforce/blip2-opt-2.7b)" in out and "git-large-coco" in out
    assert "florence-2-base (florence-community/Florence-2-base)" in out


def test_build_ships_the_label_cache(spec, tiny_models, warm_dir, tmp_path):
    args = ["build", "--model-name", spec, "--caption-model", tiny_models["blip"]]
    args += ["--with-label-cache", "--label-cache-dir", warm_dir]
    command = [sys.executable, "-m", "clip_service.cli.main", *map(str, args)]
    result = subprocess.run(
        command, cwd=REPO, env=serve_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Built clip-service:" in result.stdout
    (bento,) = (tmp_path / "bentos").glob("*/*/bento.yaml")
    envs = {e["name"]: e["value"] for e in yaml.safe_load(bento.read_text())["envs"]}
    assert envs["CLIP_MODEL"] == spec and envs["LABEL_CACHE_DIR"] == "label-cache"
    shipped = bento.parent / "src" / "label-cache"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(
        p.name for p in warm_dir.glob("*.safetensors")
    )
    for path in shipped.iterdir():
        assert path.read_bytes() == (warm_dir / path.name).read_bytes()
