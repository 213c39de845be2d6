"""BLIP captioning: parity with clip-interrogator 0.6.0, batching, the two-process split, specs.
(The other captioners: tests/test_captioners.py.)"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from clip_interrogator import Config, Interrogator
from clip_interrogator.clip_interrogator import CAPTION_MODELS
from PIL import Image
from transformers import AutoProcessor, BlipForConditionalGeneration

from clip_service.models.captioning import (
    Captioner,
    CaptionPreprocessor,
    GenerationSettings,
    ModelUnavailableError,
    resolve_caption_model,
)
from clip_service.models.specs import ModelSpecError


def _images() -> list[Image.Image]:
    """Images the seed-0 tiny BLIP captions differently, with captions of different lengths
    (so batched generation has to pad finished rows), in several sizes and modes."""
    gradient = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    noise = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    return [
        Image.new("RGB", (64, 64), "black"),
        Image.new("RGB", (500, 300), "white"),
        Image.new("RGB", (32, 80), "red"),
        Image.new("RGBA", (64, 64), (0, 0, 255, 128)),
        Image.fromarray(gradient, "L"),
        Image.fromarray(noise),
    ]


IMAGES = _images()


@pytest.fixture(scope="module")
def blip_dir(tiny_models) -> str:
    return str(tiny_models["blip"])


@pytest.fixture(scope="module")
def captioner(blip_dir) -> Captioner:
    return Captioner.load(blip_dir, "cpu")


def test_loads_on_cpu_in_fp32(captioner, blip_dir):
    assert (captioner.spec, captioner.source) == (blip_dir, str(Path(blip_dir).resolve()))
    assert (captioner.device, captioner.dtype) == (torch.device("cpu"), torch.float32)
    assert not captioner.model.training
    assert captioner.settings == GenerationSettings(max_new_tokens=32)  # 0.6.0's


# 0.6.0 embeds its labels under the deprecated torch.cuda.amp.autocast, which warns on CPU.
@pytest.mark.filterwarnings("ignore:.*autocast:FutureWarning", "ignore:CUDA is not available")
def test_captions_match_clip_interrogator_0_6_0(captioner, blip_dir, tiny_models, tmp_path):
    # 0.6.0's own caption path on the same model, loaded the way its load_caption_model does.
    # Its constructor also embeds every label list with the CLIP model (~1 min even with the
    # tiny model on 2 cores), so data_path points at one-label lists instead.
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("artists", "flavors", "mediums", "movements", "negative"):
        (labels / f"{name}.txt").write_text("a label\n", encoding="utf-8")
    config = Config(
        caption_model_name="blip-base",  # 0.6.0 only looks at the prefix once a model is given
        clip_model_name="ViT-B-32/tiny",  # only names the tokenizer and the label cache files
        data_path=str(labels),
        cache_path=str(tmp_path / "cache"),
        download_cache=False,
        device="cpu",
        quiet=True,
    )
    # Not dataclass fields in 0.6.0, so they cannot go through Config(...).
    config.caption_model = BlipForConditionalGeneration.from_pretrained(
        blip_dir, torch_dtype=torch.float32
    ).eval()
    config.caption_processor = AutoProcessor.from_pretrained(blip_dir)
    config.clip_model, _, config.clip_preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{tiny_models['open-clip']}"
    )
    interrogator = Interrogator(config)

    expected = [interrogator.generate_caption(image) for image in IMAGES]

    assert captioner.caption(IMAGES) == expected
    assert len(set(expected)) >= 3, "the test images should not all get one caption"
    assert len({len(caption.split()) for caption in expected}) >= 2


def test_batched_captions_equal_single_image_captions(captioner):
    assert captioner.caption(IMAGES) == [captioner.caption([image])[0] for image in IMAGES]
    assert captioner.caption(IMAGES[::-1]) == captioner.caption(IMAGES)[::-1]


def test_preprocess_in_another_process_then_caption_pixels(captioner, blip_dir):
    pixels = CaptionPreprocessor.load(blip_dir).preprocess(IMAGES)
    assert pixels.dtype == np.float32
    assert pixels.shape == (len(IMAGES), 3, 384, 384)
    np.testing.assert_array_equal(pixels, captioner.preprocess(IMAGES))

    # As a model service would receive it: decoded from bytes, hence read-only.
    received = np.frombuffer(pixels.tobytes(), dtype=np.float32).reshape(pixels.shape)
    assert captioner.caption_pixels(received) == captioner.caption(IMAGES)


def test_empty_batches_and_bad_pixel_shapes(captioner):
    assert captioner.caption([]) == []
    assert captioner.caption_pixels(np.zeros((0, 3, 384, 384), np.float32)) == []
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        captioner.caption_pixels(np.zeros((3, 384, 384), np.float32))
    with pytest.raises(ValueError, match="no images"):
        captioner.preprocess([])


def test_generation_settings_reach_generate(blip_dir):
    assert GenerationSettings().generate_kwargs() == {}  # the family's defaults fill it in
    settings = GenerationSettings(max_new_tokens=4, num_beams=2, repetition_penalty=1.3)
    assert settings.generate_kwargs() == {
        "max_new_tokens": 4,
        "num_beams": 2,
        "repetition_penalty": 1.3,
    }

    captioner = Captioner.load(blip_dir, "cpu", settings)
    model, processor = captioner.model, captioner.processor
    with torch.inference_mode():
        tokens = model.generate(
            **processor(images=IMAGES, return_tensors="pt"), **settings.generate_kwargs()
        )
    expected = [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
    assert captioner.caption(IMAGES) == expected
    assert all(len(processor.tokenizer.tokenize(caption)) <= 4 for caption in expected)


@pytest.mark.parametrize(
    "overrides",
    [{"max_new_tokens": 0}, {"num_beams": 0}, {"min_length": -1}, {"repetition_penalty": 0.0}],
)
def test_invalid_generation_settings(overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        GenerationSettings(**overrides)


def test_resolve_caption_model(tmp_path, blip_dir):
    assert resolve_caption_model("blip-base") == CAPTION_MODELS["blip-base"]
    assert resolve_caption_model(" blip-large ") == CAPTION_MODELS["blip-large"]
    assert resolve_caption_model("org/some-blip") == "org/some-blip"
    assert resolve_caption_model(blip_dir) == str(Path(blip_dir).resolve())

    with pytest.raises(ValueError, match=r"no config\.json"):
        resolve_caption_model(str(tmp_path))
    for missing in (str(tmp_path / "nope"), "./nope", "~/nope"):
        with pytest.raises(ValueError, match="no such directory"):
            resolve_caption_model(missing)
    for junk in ("", "blip", "a/b/c"):
        with pytest.raises(ModelSpecError):
            resolve_caption_model(junk)


def test_non_captioner_model_directory_is_rejected(tiny_models):
    with pytest.raises(ModelSpecError, match=r"is a CLIPModel model; the captioners served are"):
        Captioner.load(str(tiny_models["hf-clip"]), "cpu")


def test_unreadable_model_directory_fails_with_one_line(blip_dir, tmp_path):
    broken = shutil.copytree(
        blip_dir, tmp_path / "blip", ignore=shutil.ignore_patterns("*.safetensors")
    )
    with pytest.raises(
        ModelUnavailableError, match=r"^Cannot load caption model '.*/blip': [^\n]+$"
    ):
        Captioner.load(str(broken), "cpu")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, patched where transformers reads it at call time."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def connections(monkeypatch) -> list[object]:
    """Every outgoing connection attempted (and refused) while the test runs: loading
    must not ask the Hub (no retries with back-off, no waiting on an unreachable host)."""
    attempted: list[object] = []

    def connect(self: socket.socket, address: object) -> None:
        attempted.append(address)
        raise ConnectionRefusedError(f"test: no connections ({address})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempted


def test_uncached_repo_offline_fails_with_one_clear_line(hub_cache, monkeypatch, connections):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError) as raised:
        Captioner.load("blip-base", "cpu")
    assert connections == []

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "Cannot load caption model 'blip-base' (Salesforce/blip-image-captioning-base): "
        "not in the local Hugging Face cache and not downloadable ("
    )
    assert "Set CAPTION_MODEL to a local directory" in message
    assert raised.value.__suppress_context__


def test_cached_repo_id_loads_without_asking_the_hub(hub_cache, blip_dir, monkeypatch, connections):
    # Online mode, so only the cache-first lookup keeps this from trying the (unreachable or
    # 404ing) Hub; the repo id does not exist there.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # Should it ask anyway, the question goes to a closed loopback port, not the internet.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    repo = hub_cache / "models--clip-service-tests--no-such-blip"
    commit = "0" * 40
    shutil.copytree(blip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    captioner = Captioner.load("clip-service-tests/no-such-blip", "cpu")
    assert connections == []
    assert captioner.source == "clip-service-tests/no-such-blip"
    assert captioner.caption(IMAGES[:2]) == Captioner.load(blip_dir, "cpu").caption(IMAGES[:2])
