"""The ClipModel interface over both backends, in process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from clip_service.clip_model import load_clip_model
from clip_service.specs import parse_clip_spec

TEXTS = ["a cat", "a very long description of a painting " * 20, "x", "two words"]


@pytest.fixture(scope="module", params=["open-clip", "hf-clip"])
def model(request, tiny_models):
    return load_clip_model(parse_clip_spec(str(tiny_models[request.param])), "cpu")


def test_text_vectors_do_not_depend_on_the_batch(model):
    together = model.encode_texts(TEXTS)
    alone = np.concatenate([model.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert together.shape == (len(TEXTS), model.embedding_size)


def test_count_tokens_includes_markers_and_does_not_truncate(model):
    short, long = model.count_tokens(["a cat", "word " * 100])
    assert short == 4
    assert long == 102
    assert model.context_length == 77


def test_empty_text_list(model):
    assert model.encode_texts([]).shape == (0, model.embedding_size)


@torch.inference_mode()
def test_transformers_padding_to_longest_equals_full_context(tiny_models):
    path = str(tiny_models["hf-clip"])
    reference, tokenizer = (
        CLIPModel.from_pretrained(path).eval(),
        CLIPTokenizer.from_pretrained(path),
    )
    batch = tokenizer(
        TEXTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )
    expected = reference.get_text_features(**batch).pooler_output.numpy()
    ours = load_clip_model(parse_clip_spec(path), "cpu").encode_texts(TEXTS)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@torch.inference_mode()
def test_open_clip_trimmed_text_tower_equals_full_context(tiny_models):
    spec = parse_clip_spec(f"local-dir:{tiny_models['open-clip']}")
    ours = load_clip_model(spec, "cpu", trim_text=True)
    assert ours.trim_text
    texts = [*TEXTS, "ends with a bang!", "!!!", "a" * 400]
    expected = ours.model.encode_text(ours.tokenizer(texts)).numpy()
    np.testing.assert_allclose(ours.encode_texts(texts), expected, atol=2e-6)
    short = ["a cat", "a dog"]  # a batch of short texts runs on 4 of 77 positions
    np.testing.assert_allclose(
        ours.encode_texts(short), ours.model.encode_text(ours.tokenizer(short)).numpy(), atol=2e-6
    )
