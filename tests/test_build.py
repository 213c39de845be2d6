"""`bentoml build` and `clip-service build` work offline and produce the expected Bento."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# Any attempt to reach PyPI or a model hub goes to a closed loopback port and fails.
OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


def build(command: list[str], home: Path) -> Path:
    """Run a build into BentoML home ``home``; return the Bento's directory."""
    env = {**os.environ, **OFFLINE, "BENTOML_HOME": str(home)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (bento,) = (home / "bentos").glob("*/*/bento.yaml")
    return bento.parent


def bento_envs(bento: Path) -> dict[str, str]:
    return {
        e["name"]: e["value"] for e in yaml.safe_load((bento / "bento.yaml").read_text())["envs"]
    }


@pytest.mark.served
def test_bentoml_build_is_offline_and_cpu(tmp_path):
    bento = build([sys.executable, "-m", "bentoml", "build"], tmp_path)
    src = bento / "src"
    wanted = [REPO / "service.py", *REPO.glob("runners/*.py")]
    wanted += [
        p
        for p in (REPO / "clip_service").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    missing = [
        str(p.relative_to(REPO)) for p in wanted if not (src / p.relative_to(REPO)).is_file()
    ]
    assert not missing
    requirements = (bento / "env/python/requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert {"torch==2.14.1+cpu", "torchvision==0.29.1+cpu", "bentoml==1.4.39"} <= set(requirements)
    dockerfile = (bento / "env/docker/Dockerfile").read_text()
    assert "ENV UV_INDEX_STRATEGY=" in dockerfile and "pip install -r" in dockerfile
    assert bento_envs(bento)["UV_INDEX_STRATEGY"] == "unsafe-best-match"
    assert "CLIP_MODEL" not in bento_envs(bento)  # the server's default unless built by the CLI


@pytest.mark.served
def test_cli_build_sets_the_models(tiny_models, tmp_path):
    clip, blip = tiny_models["hf-clip"], tiny_models["blip"]
    command = [sys.executable, "-m", "clip_service.cli.main", "build", "--model-name", str(clip)]
    bento = build([*command, "--caption-model", str(blip)], tmp_path)
    envs = bento_envs(bento)
    assert envs["CLIP_MODEL"] == str(clip) and envs["CAPTION_MODEL"] == str(blip)
    assert "LABEL_CACHE_DIR" not in envs and not (bento / "src/label-cache").exists()
    assert (bento / "src/clip_service/cli/main.py").is_file()
