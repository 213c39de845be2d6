"""Without hub access and without a local model, `bentoml serve` stops at once, clearly."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, free_port, serve_env

pytestmark = pytest.mark.served


def _serve(tmp_path, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1"]
    return subprocess.run(
        [*command, "--port", str(free_port())],
        cwd=REPO,
        env=serve_env(tmp_path, HF_HOME=str(tmp_path / "hf"), **env),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_default_model_without_hub_exits_with_one_clear_line(tmp_path, monkeypatch, tiny_models):
    monkeypatch.delenv("CLIP_MODEL", raising=False)
    result = _serve(tmp_path, CAPTION_MODEL=str(tiny_models["blip"]))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "Cannot load CLIP model" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "'ViT-B-32:openai'" in lines[0]
    assert "set CLIP_MODEL to a local directory" in lines[0]
    assert "Traceback" not in result.stderr


def test_default_caption_model_without_hub_exits_with_one_clear_line(
    tmp_path, monkeypatch, tiny_models
):
    monkeypatch.delenv("CAPTION_MODEL", raising=False)
    result = _serve(tmp_path, CLIP_MODEL=str(tiny_models["hf-clip"]))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "Cannot load caption model" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "'blip-base'" in lines[0] and "Set CAPTION_MODEL to a local directory" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_spec_exits_naming_it(tmp_path, tiny_models):
    result = _serve(tmp_path, CLIP_MODEL="/no/such/model", CAPTION_MODEL=str(tiny_models["blip"]))
    assert result.returncode != 0
    assert "error: '/no/such/model': no such directory" in result.stderr


def test_the_shipped_bentoml_configuration_is_accepted(clip_only_server):
    """`BENTOML_CONFIG=configuration.yaml bentoml serve`, as docs/configuration.md says: the
    session's CLIP-only server is started so (tests/conftest.py)."""
    url = clip_only_server.url
    assert httpx.post(f"{url}/encode", json=[{"text": "a cat"}]).status_code == 200
    deadline = time.monotonic() + 30
    while "path=/encode," not in (log := clip_only_server.log()):  # its access log setting
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.2)
    assert "Applying user config override from path: configuration.yaml" in log
