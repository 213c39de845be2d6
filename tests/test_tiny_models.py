"""The tiny generated models load through the same public calls as real checkpoints."""

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from clip_service.testing import tiny_models
from clip_service.testing.tiny_models import make_blip, make_hf_clip, make_open_clip

MAKERS = {"hf-clip": make_hf_clip, "open-clip": make_open_clip, "blip": make_blip}
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
WEIGHTS = {
    "hf-clip": "model.safetensors",
    "open-clip": "open_clip_model.safetensors",
    "blip": "model.safetensors",
}
TEXTS = [
    "a photo of a cat",
    "A PAINTING of a Dog, by Greg Rutkowski; trending on ArtStation!",
    "Hello, world!!! It's 3.14159 -- isn't it?",
    "don't you'll we've I'm she'd they're",
    "café naïve façade Zürich Ærøskøbing",
    "日本語のテキスト 中文 한국어 Ελληνικά русский",
    "emoji 🐱🎉 👍🏽",
    "   lots   of\twhitespace\n\nand newlines  ",
    "snake_case camelCase kebab-case 1234567890",
    "(parentheses) [brackets] {braces} <angle> #hashtag @mention $100 50% a&b",
    "",
    "supercalifragilisticexpialidocious " * 30,  # far past 77 tokens: truncated
]


@pytest.fixture(scope="session")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    """The session's generated models (``make_all``), as every other test uses them."""
    return tiny_models


@pytest.fixture(scope="module")
def tokenizers(models: dict[str, Path]) -> tuple[Any, Any]:
    """(open_clip's, Hugging Face's) tokenizer of the two CLIP formats."""
    open_clip_tokenizer = open_clip.get_tokenizer(f"local-dir:{models['open-clip']}")
    return open_clip_tokenizer, AutoTokenizer.from_pretrained(models["hf-clip"])


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Visibly different images, so their embeddings and captions should differ too."""
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    return [
        Image.new("RGB", (320, 240), "red"),
        Image.new("RGB", (200, 300), "blue"),
        Image.fromarray(gradient),
    ]


def _max_off_diagonal_cosine(embeddings: torch.Tensor) -> float:
    e = torch.nn.functional.normalize(embeddings, dim=-1)
    sims = e @ e.T - 2 * torch.eye(len(e))
    return sims.max().item()


def test_make_all_layout(models: dict[str, Path]) -> None:
    assert set(models) == {"hf-clip", "open-clip", "blip"}
    assert {path.name for path in models.values()} == set(models)
    for kind, path in models.items():
        assert (path / WEIGHTS[kind]).is_file()


def test_hf_clip_loads_and_embeds(models: dict[str, Path], images: list[Image.Image]) -> None:
    path = models["hf-clip"]
    assert isinstance(AutoProcessor.from_pretrained(path), CLIPProcessor)
    assert isinstance(AutoTokenizer.from_pretrained(path), CLIPTokenizer)
    image_processor = AutoImageProcessor.from_pretrained(path)
    assert isinstance(image_processor, CLIPImageProcessor)
    assert image_processor.size == {"shortest_edge": 224}
    assert image_processor.crop_size == {"height": 224, "width": 224}
    assert image_processor.resample == Image.Resampling.BICUBIC
    assert list(image_processor.image_mean) == OPENAI_MEAN
    assert list(image_processor.image_std) == OPENAI_STD

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    inputs = processor(text=TEXTS[:3], images=images, return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (3, 3, 224, 224)
    with torch.no_grad():
        out = model(**inputs)
    assert out.image_embeds.shape == out.text_embeds.shape == (3, 32)
    assert _max_off_diagonal_cosine(out.image_embeds) < 0.95
    assert _max_off_diagonal_cosine(out.text_embeds) < 0.95
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_open_clip_loads_and_embeds(models: dict[str, Path], images: list[Image.Image]) -> None:
    name = f"local-dir:{models['open-clip']}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    assert model.visual.preprocess_cfg == {
        "size": (224, 224),
        "mode": "RGB",
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)

    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(im) for im in images]))
        text_features = model.encode_text(tokenizer(TEXTS[:3]))
    assert image_features.shape == text_features.shape == (3, 32)
    assert _max_off_diagonal_cosine(image_features) < 0.95
    assert _max_off_diagonal_cosine(text_features) < 0.95
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_clip_preprocessing_agrees(models: dict[str, Path], images: list[Image.Image]) -> None:
    """Both formats resize/crop/normalise the OpenAI way (resize kernels differ only slightly)."""
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{models['open-clip']}")
    ours = torch.stack([preprocess(im) for im in images])
    theirs = AutoImageProcessor.from_pretrained(models["hf-clip"])(images, return_tensors="pt")
    assert (ours - theirs["pixel_values"]).abs().max() < 0.05


@pytest.mark.parametrize("text", TEXTS)
def test_hf_tokenizer_matches_open_clip(tokenizers: tuple[Any, Any], text: str) -> None:
    open_clip_tokenizer, hf = tokenizers
    expected = open_clip_tokenizer([text])[0].tolist()
    ids = hf(text, max_length=77, truncation=True)["input_ids"]
    assert ids == expected[: len(ids)]
    assert set(expected[len(ids) :]) <= {0}  # open_clip pads with 0, HF pads with <|endoftext|>
    assert hf.pad_token == "<|endoftext|>" and hf.pad_token_id == 49407


def test_vocab_and_merges_files_alone_give_same_ids(
    models: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(models["hf-clip"] / name, tmp_path / name)
    from_files = CLIPTokenizer.from_pretrained(tmp_path)
    full = AutoTokenizer.from_pretrained(models["hf-clip"])
    assert len(from_files) == len(full) == 49408
    for text in TEXTS:
        assert from_files(text)["input_ids"] == full(text)["input_ids"]


@pytest.mark.parametrize("kind", WEIGHTS)
def test_same_seed_same_weights(kind: str, models: dict[str, Path], tmp_path: Path) -> None:
    make = MAKERS[kind]
    reference = load_file(models[kind] / WEIGHTS[kind])
    same = load_file(make(tmp_path / "same", seed=0) / WEIGHTS[kind])
    other = load_file(make(tmp_path / "other", seed=1) / WEIGHTS[kind])
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)
    assert all(t.abs().sum() > 0 for k, t in reference.items() if "bias" not in k)


def test_existing_model_is_reused_unless_seed_differs_or_incomplete(tmp_path: Path) -> None:
    weights = make_open_clip(tmp_path, seed=0) / WEIGHTS["open-clip"]
    weights.write_bytes(b"stand-in")  # a regeneration would overwrite it
    make_open_clip(tmp_path, seed=0)
    assert weights.read_bytes() == b"stand-in"
    make_open_clip(tmp_path, seed=1)
    seed1 = load_file(weights)
    weights.unlink()
    make_open_clip(tmp_path, seed=1)
    assert all(torch.equal(t, load_file(weights)[k]) for k, t in seed1.items())


def test_blip_config_mirrors_blip_base(models: dict[str, Path]) -> None:
    processor = AutoProcessor.from_pretrained(models["blip"])
    model = BlipForConditionalGeneration.from_pretrained(models["blip"])
    tokenizer, text_config = processor.tokenizer, model.config.text_config
    assert tokenizer.bos_token == "[DEC]"
    assert text_config.bos_token_id == tokenizer.convert_tokens_to_ids("[DEC]")
    assert text_config.sep_token_id == tokenizer.sep_token_id
    assert text_config.pad_token_id == tokenizer.pad_token_id == 0
    assert text_config.vocab_size == len(tokenizer)
    image_processor = processor.image_processor
    assert image_processor.size == {"height": 384, "width": 384}
    assert image_processor.resample == Image.Resampling.BICUBIC
    assert list(image_processor.image_mean) == OPENAI_MEAN
    assert list(image_processor.image_std) == OPENAI_STD
    assert image_processor.do_rescale


def test_blip_generates_words(models: dict[str, Path], images: list[Image.Image]) -> None:
    processor = AutoProcessor.from_pretrained(models["blip"])
    model = BlipForConditionalGeneration.from_pretrained(models["blip"]).eval()
    vocab = set((models["blip"] / "vocab.txt").read_text(encoding="utf-8").split())
    inputs = processor(images=images[0], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 384, 384)
    tokens = model.generate(**inputs, max_new_tokens=32)
    (caption,) = processor.batch_decode(tokens, skip_special_tokens=True)
    assert caption.strip()
    assert set(caption.replace(",", " , ").split()) <= vocab

    prompted = processor(images=images[0], text="a photo of", return_tensors="pt")
    (caption,) = processor.batch_decode(
        model.generate(**prompted, max_new_tokens=8), skip_special_tokens=True
    )
    assert caption.startswith("a photo of")


def test_blip_batch_equals_single(models: dict[str, Path], images: list[Image.Image]) -> None:
    processor = AutoProcessor.from_pretrained(models["blip"])
    model = BlipForConditionalGeneration.from_pretrained(models["blip"]).eval()

    def captions(batch: list[Image.Image]) -> list[str]:
        tokens = model.generate(**processor(images=batch, return_tensors="pt"), max_new_tokens=32)
        return processor.batch_decode(tokens, skip_special_tokens=True)

    batched = captions(images)
    assert batched == [c for im in images for c in captions([im])]
    assert len(set(batched)) > 1  # images actually influence the caption


def test_directories_are_small(models: dict[str, Path]) -> None:
    limits_mb = {"hf-clip": 16, "open-clip": 10, "blip": 4}
    for kind, path in models.items():
        size = sum(p.stat().st_size for p in path.iterdir())
        assert size < limits_mb[kind] * 2**20, (kind, size)


def test_cli_prints_usage(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tiny_models.main([str(models["blip"].parent)])  # reuses the session's models
    out = capsys.readouterr().out
    assert f"CLIP_MODEL=local-dir:{models['open-clip'].resolve()}" in out
    assert f"CLIP_MODEL={models['hf-clip'].resolve()}" in out
    assert f"CAPTION_MODEL={models['blip'].resolve()}" in out
