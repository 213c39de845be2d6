"""Served interrogation equals clip-interrogator 0.6.0 in process, on the same tiny models
and the same label tables: the ones the server built (origin "built"), handed to the library
through its own cache format."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import open_clip
import pytest
from clip_interrogator import Config
from clip_interrogator import Interrogator as LibraryInterrogator
from transformers import AutoProcessor, BlipForConditionalGeneration

from clip_service.testing.library_cache import write_library_cache
from tests.conftest import (
    b64,
    builtin_table_files,
    image_bytes,
    make_image,
    served_label_tables,
    wait_for_label_tables,
)

pytestmark = pytest.mark.served

IMAGE = make_image(7, (300, 220))
MODES = ["best", "classic", "fast", "negative"]


LIBRARY_MODEL_NAME = "ViT-B-32/tiny"  # picks the standard CLIP tokenizer, like the model's


@pytest.fixture(scope="module")
def server(open_clip_url) -> str:
    """The session server: its label tables are the ones it built (LABEL_CACHE_DIR of its own)."""
    return open_clip_url


@pytest.fixture(scope="module")
def label_cache(open_clip_server) -> Path:
    return open_clip_server.label_cache


@pytest.fixture(scope="module")
def library(tiny_models, server, label_cache, tmp_path_factory) -> LibraryInterrogator:
    assert set(wait_for_label_tables(server)["origins"].values()) == {"built"}
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{tiny_models['open-clip']}"
    )
    cache = write_library_cache(
        tmp_path_factory.mktemp("library-cache"),
        LIBRARY_MODEL_NAME,
        served_label_tables(label_cache),
    )
    config = Config(
        clip_model_name=LIBRARY_MODEL_NAME,
        cache_path=str(cache),
        download_cache=False,
        device="cpu",
        quiet=True,
    )
    # 0.6.0 takes injected models as plain (non-init) attributes of its Config.
    config.clip_model, config.clip_preprocess = model.eval(), preprocess
    config.caption_model = BlipForConditionalGeneration.from_pretrained(tiny_models["blip"])
    config.caption_processor = AutoProcessor.from_pretrained(tiny_models["blip"])
    return LibraryInterrogator(config)


@pytest.fixture(scope="module")
def expected(library) -> Callable[..., object]:
    """``expected("interrogate")``: the library's answer for IMAGE (method, keyword
    arguments), worked out once per module: it is deterministic, and its best-mode chain
    takes a minute here, which several tests compare with."""
    answers: dict[tuple, object] = {}

    def answer(method: str, **kwargs: object) -> object:
        key = (method, tuple(sorted(kwargs.items())))
        if key not in answers:
            answers[key] = getattr(library, method)(IMAGE, **kwargs)
        return answers[key]

    return answer


def _post(url: str, route: str, **body) -> dict:
    body = {"image": {"img_blob": b64(image_bytes(IMAGE))}, **body}
    response = httpx.post(f"{url}{route}", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_caption_equals_library(server, expected):
    assert _post(server, "/caption")["caption"] == expected("generate_caption")


@pytest.mark.parametrize("mode", MODES)
def test_prompt_equals_library(server, expected, mode):
    method = {
        "best": "interrogate",
        "classic": "interrogate_classic",
        "fast": "interrogate_fast",
        "negative": "interrogate_negative",
    }[mode]
    body = _post(server, "/interrogate", mode=mode)
    assert body["prompt"] == expected(method)
    assert body["mode"] == mode
    caption = expected("generate_caption")
    assert body["caption"] == ("" if mode == "negative" else caption)


def test_given_caption_is_used(server, expected):
    body = _post(server, "/interrogate", mode="fast", caption="a red square")
    assert body["prompt"] == expected("interrogate_fast", caption="a red square")
    assert body["caption"] == "a red square"


def test_extract_text_is_the_best_prompt(server, expected):
    response = httpx.post(f"{server}/extract_text", content=image_bytes(IMAGE), timeout=600)
    assert response.status_code == 200, response.text
    assert response.json() == {"text": expected("interrogate")}


def _submitted(answer: httpx.Response) -> str:
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/jobs/{answer.json()['id']}"
    return answer.json()["id"]


def _finish(url: str, job_id: str) -> tuple[dict, list[dict]]:
    """Poll a job to its end: (its last status, every progress seen while it ran)."""
    location, seen = f"/jobs/{job_id}", []
    deadline = time.monotonic() + 300
    while (status := httpx.get(f"{url}{location}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        if status["status"] == "running":
            seen.append(status["progress"])
        time.sleep(0.02)
    return status, seen


def test_best_mode_job_shows_its_chain_steps_and_gives_the_prompt(server, expected):
    image = {"img_blob": b64(image_bytes(IMAGE))}
    submitted = httpx.post(f"{server}/jobs/interrogate", json={"image": image}, timeout=60)
    status, seen = _finish(server, _submitted(submitted))
    assert status["status"] == "succeeded" and status["kind"] == "interrogate"
    steps = [p["step"] for p in seen if p["stage"] == "chain"]
    assert steps and steps == sorted(steps) and {p["steps"] for p in seen if p["step"]} == {32}
    result = httpx.get(f"{server}/jobs/{status['id']}/result").json()
    assert result == _post(server, "/interrogate")
    assert result["prompt"] == expected("interrogate")
    text_job = httpx.post(f"{server}/jobs/extract_text", content=image_bytes(IMAGE), timeout=60)
    status, _ = _finish(server, _submitted(text_job))
    assert httpx.get(f"{server}/jobs/{status['id']}/result").json() == {"text": result["prompt"]}


def test_a_cancelled_job_stops_and_has_no_result(server):
    image = {"img_blob": b64(image_bytes(IMAGE))}
    job_id = _submitted(httpx.post(f"{server}/jobs/interrogate", json={"image": image}))
    assert httpx.delete(f"{server}/jobs/{job_id}").status_code == 200
    status, _ = _finish(server, job_id)
    assert status["status"] == "cancelled"
    refused = httpx.get(f"{server}/jobs/{job_id}/result")
    assert refused.status_code == 409 and refused.json()["error"].startswith("job: the job is")
    missing = httpx.get(f"{server}/jobs/{'0' * 32}")
    assert missing.status_code == 404 and missing.json()["error"].startswith("job: no job")


def test_analyze_ranks_each_table(server, library):
    body = _post(server, "/analyze", top_k=3)
    features = library.image_to_features(IMAGE)
    assert [x["label"] for x in body["mediums"]] == library.mediums.rank(features, 3)
    assert [x["label"] for x in body["flavors"]] == library.flavors.rank(features, 3)
    for name in ("mediums", "artists", "movements", "trendings", "flavors"):
        scores = [x["score"] for x in body[name]]
        assert len(scores) == 3 and all(-1 <= s <= 1 for s in scores)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"mode": "best"}, r"^image: Field required"),
        ({"image": {"img_blob": "eA"}}, r"^image\.img_blob: not valid base64"),
        ({"image": {}}, r"^image: Value error, exactly one of img_uri, img_blob"),
        ({"image": {"img_uri": "https://x"}, "mode": "worst"}, r"^mode: Input should be"),
        ({"image": {"img_uri": "https://x"}, "max_flavors": 0}, r"^max_flavors: Input should"),
    ],
)
def test_bad_interrogate_input_is_a_400(server, body, message):
    response = httpx.post(f"{server}/interrogate", json=body)
    assert response.status_code == 400, response.text
    assert re.match(message, response.json()["error"]), response.json()


def test_restart_reuses_the_label_cache(label_cache, server, open_clip_restarted):
    """A second server on the same label cache (started once the first had built its
    tables; shared with tests/test_served_metrics.py) loads them and writes nothing."""
    _post(server, "/interrogate", mode="fast")  # the tables exist once a prompt was made
    files = open_clip_restarted.files_before
    assert len(files) == 6
    restarted = open_clip_restarted.server
    _post(restarted.url, "/interrogate", mode="fast")
    log = restarted.log()
    assert {p: p.stat().st_mtime_ns for p in builtin_table_files(label_cache)} == files
    assert "Preprocessing" not in log  # no progress bar: nothing was encoded
    assert log.count("label table") >= 6 and "loaded" in log
