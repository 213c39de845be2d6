"""The ClipModel interface over both backends, in process."""

from __future__ import annotations

import threading
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from clip_service.models.backends.open_clip_backend import OpenClipModel
from clip_service.models.clip import ClipModel
from clip_service.models.factory import load_clip_model
from clip_service.models.specs import parse_clip_spec
from clip_service.models.text_prefix import (
    PrefixCache,
    PrefixedRows,
    encode_sharing_prefix,
    shared_prefix_length,
)

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


def test_tokenizing_and_counting_at_once_never_mix(model):
    """The encoder counts tokens (``/v1/embeddings`` usage) in one thread while a batch is
    tokenized in another: Hugging Face's fast tokenizer keeps its padding as shared state,
    and without the model's tokenizer lock about one batch in a few hundred came out ragged
    (ValueError, a 500). Both threads hammer it; no call may fail or change its answer."""
    texts = ["a", "an oil painting of a harbour at dusk " * 3, "b c d"]
    counts = model.count_tokens(texts)
    failures: list[BaseException] = []

    def tokenizing() -> None:
        for _ in range(400):
            try:
                model.tokenize(texts)
            except Exception as exc:
                failures.append(exc)

    def counting() -> None:
        for _ in range(400):
            try:
                assert model.count_tokens(texts) == counts
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=f) for f in (tokenizing, counting) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_empty_text_list(model):
    assert model.encode_texts([]).shape == (0, model.embedding_size)


def full_context_reference(model: ClipModel, texts: list[str]) -> np.ndarray:
    """The library's own text features with every text padded to the 77-token context."""
    with torch.inference_mode():
        if isinstance(model, OpenClipModel):
            return model.model.encode_text(model.tokenizer(texts)).numpy()
        reference = CLIPModel.from_pretrained(model.spec.name).eval()
        batch = CLIPTokenizer.from_pretrained(model.spec.name)(
            texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
        )
        return reference.get_text_features(**batch).pooler_output.numpy()


def assert_close_to(ours: np.ndarray, expected: np.ndarray) -> None:
    cosine = (ours * expected).sum(-1) / np.linalg.norm(ours, axis=-1)
    cosine /= np.linalg.norm(expected, axis=-1)
    assert cosine.min() > 0.99999
    np.testing.assert_allclose(ours, expected, atol=1e-5)


# A chain step: one prompt plus each candidate, some past the context (truncated), the prompt
# alone (the shared prefix is then all of it but its end token), and a duplicate.
PROMPT = "a painting of a cat sitting on a table, oil on canvas, highly detailed, by a master"
CANDIDATES = ["red", "a very long list of words " * 12, "dramatic lighting", "red", "!!!"]
CHAIN_STEP = [PROMPT, *(f"{PROMPT}, {c}" for c in CANDIDATES), PROMPT + " x" * 70]


def test_text_padding_is_trimmed_by_default(model):
    assert model.trim_text
    short = ["a cat", "a dog"]  # a batch of short texts runs on 4 of 77 positions
    for texts in (short, [*TEXTS, "ends with a bang!", "!!!", "a" * 400]):
        assert_close_to(model.encode_texts(texts), full_context_reference(model, texts))


def test_untrimmed_model_pads_to_the_context(model):
    full = load_clip_model(model.spec, "cpu", trim_text=False)
    assert not full.trim_text
    np.testing.assert_allclose(
        full.encode_texts(TEXTS), full_context_reference(model, TEXTS), atol=1e-6
    )
    # Prefix sharing is part of trimming: untrimmed, it is the plain path.
    np.testing.assert_array_equal(
        full.encode_texts_sharing_prefix(CHAIN_STEP), full.encode_texts(CHAIN_STEP)
    )


def test_prefix_shared_encoding_equals_full_context(model):
    tower, ids, eot = model._prefix_inputs(model._tokenize(CHAIN_STEP, True))
    assert shared_prefix_length(ids, eot) == int(eot[0]) > 15  # all of PROMPT is shared
    assert max(model.count_tokens(CHAIN_STEP)) > model.context_length
    expected = full_context_reference(model, CHAIN_STEP)
    assert_close_to(model.encode_texts_sharing_prefix(CHAIN_STEP), expected)
    # Small chunks (a few texts each, by suffix length) give the same.
    rows = PrefixedRows.of(ids, eot)
    chunked = encode_sharing_prefix(tower, rows, nullcontext(), chunk_tokens=40)
    assert_close_to(chunked.numpy(), expected)
    assert model.encode_texts_sharing_prefix([]).shape == (0, model.embedding_size)


def test_texts_without_a_common_prefix(model):
    _, ids, eot = model._prefix_inputs(model._tokenize(TEXTS, True))
    assert shared_prefix_length(ids, eot) == 1  # the start token
    assert_close_to(model.encode_texts_sharing_prefix(TEXTS), full_context_reference(model, TEXTS))
    same = ["a cat", "a cat"]
    _, ids, eot = model._prefix_inputs(model._tokenize(same, True))
    assert shared_prefix_length(ids, eot) == 3  # each keeps its end token
    assert_close_to(model.encode_texts_sharing_prefix(same), full_context_reference(model, same))


class CountingCache(PrefixCache):
    """Records the length of every prefix computed (each is stored once computed)."""

    def __init__(self) -> None:
        super().__init__()
        self.computed: list[int] = []

    def put(self, ids: tuple[int, ...], layers) -> None:
        self.computed.append(len(ids))
        super().put(ids, layers)


def test_slices_and_longer_prompts_reuse_cached_prefixes(model):
    """A chain step arrives in slices, and the next step's prompt extends this one's: the
    prefix's keys and values are computed once, then only the new tokens on top of them."""
    rows = model.prefixed(CHAIN_STEP)
    cache = CountingCache()
    expected = full_context_reference(model, CHAIN_STEP)
    for part in (slice(0, 1), slice(1, 4), slice(4, None)):  # the scheduler's slices
        sliced = encode_sharing_prefix(model.prefix_tower, rows[part], nullcontext(), cache)
        assert_close_to(sliced.numpy(), expected[part])
    assert cache.computed == [rows.prefix_length]  # once, for the whole step
    longer = model.prefixed([f"{PROMPT}, oil on canvas, {flavor}" for flavor in ("red", "blue")])
    key = tuple(longer.ids[0, : longer.prefix_length].tolist())
    assert cache.longest(key)[0] == rows.prefix_length  # this step's prefix starts the next's
    out = encode_sharing_prefix(model.prefix_tower, longer, nullcontext(), cache)
    texts = [f"{PROMPT}, oil on canvas, {flavor}" for flavor in ("red", "blue")]
    assert_close_to(out.numpy(), full_context_reference(model, texts))
    assert cache.computed == [rows.prefix_length, longer.prefix_length]
