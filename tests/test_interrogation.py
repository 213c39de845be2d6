"""Parity of clip_service.interrogation with clip-interrogator 0.6.0, run in-process.

Both sides get the same tiny random-weight open_clip (and BLIP) models and the same label
tables: the tables this project builds (source "built") are handed to the library through
its own cache format, which it loads after checking their hashes, as it would load the
tables it downloads. That our tables equal the library's own computation up to float16
rounding is a test of its own. Encoding the full ~112k labels takes about a minute per side
on 2 cores, so the mode-parity tests run on a strided subset of the installed word lists
(still large enough for every chunked-ranking path at the default chunk_size of 2048) with
0.6.0's default settings. Label contents and hashes are checked on the full installed lists
through the library's own LabelTable code with a stubbed encoder, and the full-data mode
parity runs with INTERROGATION_FULL_DATA=1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from clip_interrogator import Config
from clip_interrogator import Interrogator as LibraryInterrogator
from clip_interrogator.clip_interrogator import (
    _merge_tables,
    _prompt_at_max_len,
    _truncate_to_fit,
)
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from safetensors.numpy import load_file, save_file
from transformers import AutoProcessor, BlipForConditionalGeneration

from clip_service.interrogation.interrogator import (
    ANALYZE_TABLES,
    Interrogator,
    InterrogatorSettings,
    Mode,
)
from clip_service.interrogation.label_cache import LabelCache, LabelTables
from clip_service.interrogation.labels import (
    MERGED_TABLES,
    TABLE_NAMES,
    package_data_dir,
    read_label_tables,
)
from clip_service.models.clip import ClipModel
from clip_service.models.factory import load_clip_model
from clip_service.models.specs import parse_clip_spec
from clip_service.testing.library_cache import write_library_cache
from clip_service.testing.tiny_models import make_blip, make_open_clip

pytestmark = [
    pytest.mark.served,  # parity with the library: the full tier
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:CUDA is not available:UserWarning"),
]

# The arch only selects the tokenizer 0.6.0 uses: ViT-B-32's is the standard 77-token BPE one.
LIBRARY_MODEL_NAME = "ViT-B-32/tiny"
MODEL_KEY = "tiny-open-clip"
# Strides over the installed lists: 3510 artist and 8415 flavor labels, the rest in full.
SUBSET_STRIDES = {"artists.txt": 3, "flavors.txt": 12}
DATA_FILES = ("artists.txt", "flavors.txt", "mediums.txt", "movements.txt", "negative.txt")
LONG_CAPTION = (
    "a highly detailed oil painting of an old wooden fishing boat on a stormy grey sea under "
    "dark clouds at sunset with a lighthouse and seagulls in the distance, dramatic lighting"
)
SHORT_CAPTION = "a painting of a cat sitting on a table"
# Filled in with the image's top medium, for classic's "caption starts with the medium" branch.
MEDIUM_CAPTION = "{medium} of a cat"
MODE_CASES = [  # (mode, image seed, caption, extra arguments)
    *[(mode, 0, SHORT_CAPTION, {}) for mode in Mode],
    # (negative mode ignores the caption, so it runs on images 0 and 2 only)
    *[(mode, 1, LONG_CAPTION, {}) for mode in Mode if mode is not Mode.NEGATIVE],
    # The chain adds nothing, so best's final pick is decided among the other candidates.
    (Mode.BEST, 2, SHORT_CAPTION, {"max_flavors": 0}),
    (Mode.BEST, 3, MEDIUM_CAPTION, {"min_flavors": 1, "max_flavors": 3}),
    (Mode.CLASSIC, 3, MEDIUM_CAPTION, {}),
    (Mode.FAST, 2, SHORT_CAPTION, {"max_flavors": 5}),
    (Mode.NEGATIVE, 2, SHORT_CAPTION, {"max_flavors": 3}),
]


class OpenClipTextEncoder:
    """The TextEncoder protocol over the service's in-process ClipModel, counting its work."""

    def __init__(self, model: ClipModel) -> None:
        self.model = model
        self.context_length = model.context_length
        self.calls = 0
        self.batch_sizes: list[int] = []

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.batch_sizes.append(len(texts))
        return self.model.encode_texts(texts)

    async def encode_texts_sharing_prefix(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.batch_sizes.append(len(texts))
        return self.model.encode_texts_sharing_prefix(texts)

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.model.count_tokens(texts)


class TinyClip:
    def __init__(self, path: Path) -> None:
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        # The service's own model, with its default (trimmed) text paths, on the same weights.
        self.ours = load_clip_model(parse_clip_spec(f"local-dir:{path}"), "cpu")

    def image_features(self, image: Image.Image) -> np.ndarray:
        """Raw (un-normalised) features, as the encoder service returns them."""
        with torch.inference_mode():
            return self.model.encode_image(self.preprocess(image).unsqueeze(0))[0].numpy()


def make_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (240, 320, 3), np.uint8))


def library_prompt(library: LibraryInterrogator, mode: Mode, image, caption, kwargs) -> str:
    if mode is Mode.BEST:
        return library.interrogate(image, caption=caption, **kwargs)
    if mode is Mode.CLASSIC:
        return library.interrogate_classic(image, caption=caption, **kwargs)
    if mode is Mode.FAST:
        return library.interrogate_fast(image, caption=caption, **kwargs)
    return library.interrogate_negative(image, **kwargs)


def record_similarity_calls(
    monkeypatch: pytest.MonkeyPatch, library: LibraryInterrogator, interrogator: Interrogator
) -> tuple[list[str], list[str]]:
    """The texts each side scores one at a time: the chain's trajectory, step by step."""
    theirs: list[str] = []
    ours: list[str] = []
    library_similarity, our_similarity = library.similarity, interrogator._similarity

    def library_recorder(image_features: torch.Tensor, text: str) -> float:
        theirs.append(text)
        return library_similarity(image_features, text)

    async def our_recorder(image: torch.Tensor, text: str) -> float:
        ours.append(text)
        return await our_similarity(image, text)

    monkeypatch.setattr(library, "similarity", library_recorder)
    monkeypatch.setattr(interrogator, "_similarity", our_recorder)
    return theirs, ours


def library_config(clip: TinyClip, data_path: Path, cache_path: Path, **overrides) -> Config:
    # The injected models are plain class attributes of Config, not dataclass fields, so they
    # cannot be passed to its constructor.
    config = Config(
        clip_model_name=LIBRARY_MODEL_NAME,
        cache_path=str(cache_path),
        download_cache=False,
        data_path=str(data_path),
        device="cpu",
        quiet=True,
        **overrides,
    )
    config.clip_model, config.clip_preprocess = clip.model, clip.preprocess
    return config


async def build_tables(
    encoder: OpenClipTextEncoder, cache_dir: Path, data_dir: Path | None
) -> tuple[LabelTables, LabelCache]:
    """What the encoder service builds: the trimmed text tower, as it encodes everything."""
    cache = LabelCache(cache_dir, MODEL_KEY, encoder.encode_texts, progress=False)
    return await cache.embed_all(read_label_tables(data_dir)), cache


def give_library(tables: LabelTables, cache_dir: Path) -> Path:
    """Our tables where the library loads its cache from."""
    found = [(name, tables[name].table.hash, tables[name].embeds) for name in TABLE_NAMES]
    return write_library_cache(cache_dir, LIBRARY_MODEL_NAME, found)


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    return TinyClip(make_open_clip(tmp_path_factory.mktemp("open-clip")))


@pytest.fixture(scope="session")
def subset_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    for name in DATA_FILES:
        lines = (package_data_dir() / name).read_text("utf-8", "replace").splitlines()
        (out / name).write_text("\n".join(lines[:: SUBSET_STRIDES.get(name, 1)]) + "\n", "utf-8")
    return out


@pytest.fixture(scope="session")
def library(
    clip: TinyClip, subset_data: Path, tables: LabelTables, tmp_path_factory
) -> LibraryInterrogator:
    """The library on the same models and label tables as ours."""
    cache = give_library(tables, tmp_path_factory.mktemp("library-cache"))
    ci = LibraryInterrogator(library_config(clip, subset_data, cache, caption_model_name=None))
    assert isinstance(ci.tokenize, SimpleTokenizer) and ci.tokenize.context_length == 77
    return ci


@pytest.fixture(scope="session")
def encoder(clip: TinyClip) -> OpenClipTextEncoder:
    return OpenClipTextEncoder(clip.ours)


@pytest.fixture(scope="session")
def our_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("our-cache")


@pytest.fixture(scope="session")
def tables(encoder: OpenClipTextEncoder, our_cache_dir: Path, subset_data: Path) -> LabelTables:
    tables, cache = asyncio.run(build_tables(encoder, our_cache_dir, subset_data))
    assert (cache.built, cache.loaded) == (len(TABLE_NAMES), 0)
    assert tables.made_now == TABLE_NAMES
    assert set(tables.origins.values()) == {"built"}
    return tables


@pytest.fixture(scope="session")
def interrogator(encoder: OpenClipTextEncoder, tables: LabelTables) -> Interrogator:
    return Interrogator(encoder, tables)


def test_tokenizer_is_the_standard_clip_one(clip: TinyClip) -> None:
    assert isinstance(clip.tokenizer, SimpleTokenizer)
    assert clip.tokenizer.context_length == 77
    assert open_clip.get_tokenizer(LIBRARY_MODEL_NAME.split("/")[0]).encode("a cat") == (
        clip.tokenizer.encode("a cat")
    )


def test_count_tokens_matches_prompt_at_max_len(clip: TinyClip, encoder) -> None:
    """0.6.0's `tokenize([t])[0][-1] != 0` is exactly `count_tokens(t) >= context_length`."""
    flavors = read_label_tables()["flavors"].labels[:200]
    texts = [", ".join(flavors[:n]) for n in range(1, 60)] + ["", "!!!!"]
    texts += ["a " * n for n in range(70, 80)] + ["x" * n for n in range(100, 400, 7)]
    counts = asyncio.run(encoder.count_tokens(texts))
    assert {75, 76, 77, 78} <= set(counts)  # both sides of the boundary are covered
    for text, count in zip(texts, counts, strict=True):
        assert bool(_prompt_at_max_len(text, clip.tokenizer)) == (count >= 77), text


def test_truncate_to_fit_matches_library(
    clip: TinyClip, interrogator: Interrogator, encoder: OpenClipTextEncoder
) -> None:
    flavors = read_label_tables()["flavors"].labels[1000:3000]
    texts = [
        "a cat",
        "",
        LONG_CAPTION + ", " + ", ".join(flavors[:40]),
        "x" * 400 + ", a, b",
        ", ".join(flavors[:30]) + ", , trailing",
        *(", ".join(flavors[i : i + 25]) for i in range(0, 2000, 10)),
    ]
    for text in texts:
        expected = _truncate_to_fit(text, clip.tokenizer)
        assert asyncio.run(interrogator._truncate_to_fit(text)) == expected, text
    # The boundary is covered: for some text the first check (kept parts + next part, without
    # the separator) that reaches the context length is exactly 77 tokens.
    first_full = []
    for text in texts:
        parts = text.split(", ")
        checks = [", ".join(parts[:i]) + parts[i] for i in range(1, len(parts))]
        counts = asyncio.run(encoder.count_tokens(checks))
        first_full.append(next((n for n in counts if n >= 77), None))
    assert 77 in first_full


def test_labels_and_hashes_equal_library_on_installed_data(monkeypatch, tmp_path) -> None:
    """The library's own LabelTable code builds and hashes the full lists (encoder stubbed)."""

    class NoTextModel(torch.nn.Module):
        def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
            return torch.ones(len(tokens), 2)

    def no_tokenizer(name: str):
        return lambda texts: torch.zeros(len(texts), 1, dtype=torch.long)

    monkeypatch.setattr(open_clip, "get_tokenizer", no_tokenizer)
    config = Config(
        clip_model_name=LIBRARY_MODEL_NAME,
        cache_path=str(tmp_path),
        download_cache=False,
        device="cpu",
        quiet=True,
        caption_model_name=None,
    )
    config.clip_model = NoTextModel()
    ci = LibraryInterrogator(config)
    ours = read_label_tables()
    assert Path(config.data_path) == package_data_dir()
    for name in TABLE_NAMES:
        stored = load_file(tmp_path / f"ViT-B-32_tiny_{name}.safetensors")["hash"]
        assert list(ours[name].labels) == list(getattr(ci, name).labels), name
        assert ours[name].hash == "".join(chr(c) for c in stored), name
    raw_artists = (package_data_dir() / "artists.txt").read_text("utf-8").splitlines()
    assert len(ours["artists"].labels) == 2 * len(raw_artists)
    assert len(ours["trendings"].labels) == 4 * 18


def test_library_ranks_with_our_tables(library: LibraryInterrogator, tables: LabelTables) -> None:
    """The parity tests' premise: the library loaded our tables instead of encoding."""
    for name in TABLE_NAMES:
        expected = np.stack(getattr(library, name).embeds)
        assert expected.dtype == tables[name].embeds.dtype == np.float32
        np.testing.assert_array_equal(tables[name].embeds, expected, err_msg=name)


def test_built_tables_equal_the_librarys_own_up_to_float16_rounding(
    clip: TinyClip, tables: LabelTables, subset_data: Path, tmp_path: Path
) -> None:
    """Ours run the text tower only up to each batch's longest label, the library's through
    all 77 positions: the same unit float32 features up to rounding (~1e-6), so after float16
    rounding an element differs by at most that plus one float16 step, and rarely at all."""
    own = LibraryInterrogator(library_config(clip, subset_data, tmp_path, caption_model_name=None))
    for name in TABLE_NAMES:
        theirs = np.stack(getattr(own, name).embeds)
        ours = tables[name].embeds
        larger = np.maximum(np.abs(ours), np.abs(theirs)).astype(np.float16)
        step = np.spacing(larger).astype(np.float32)
        assert (np.abs(ours - theirs) <= step + 1e-6).all(), name
        assert (ours != theirs).mean() < 0.01, name


@pytest.mark.parametrize(
    ("mode", "seed", "caption", "kwargs"),
    MODE_CASES,
    ids=[f"{mode}-{seed}-{i}" for i, (mode, seed, *_) in enumerate(MODE_CASES)],
)
def test_modes_equal_library(
    mode: Mode,
    seed: int,
    caption: str,
    kwargs: dict[str, int],
    clip: TinyClip,
    library: LibraryInterrogator,
    interrogator: Interrogator,
    encoder: OpenClipTextEncoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = make_image(seed)
    if caption == MEDIUM_CAPTION:
        top_medium = library.mediums.rank(library.image_to_features(image), 1)[0]
        caption = caption.format(medium=top_medium)
    theirs, ours = record_similarity_calls(monkeypatch, library, interrogator)
    expected = library_prompt(library, mode, image, caption, kwargs)
    encoder.batch_sizes.clear()
    features = clip.image_features(image)
    prompt = asyncio.run(interrogator.interrogate(features, mode, caption=caption, **kwargs))
    assert prompt == expected
    assert ours == theirs
    # Chain steps score ~2,000 prompts, never more than score_chunk_size per encoder call.
    assert max(encoder.batch_sizes, default=0) <= interrogator.settings.score_chunk_size
    if kwargs.get("max_flavors") == 0:
        assert prompt != caption  # the final pick did not just return the (empty) chain


@pytest.mark.parametrize(
    ("top", "best_prompt", "reverse", "min_count", "max_count"),
    [
        # Reversed from scratch: the start score is not negated (0.6.0 quirk) and, as all
        # these phrases are very similar, no longer prompt beats it.
        (60, "", True, 8, 8),
        (40, "", False, 2, 12),  # few forced additions, then only improvements
        (200, LONG_CAPTION + ", " + LONG_CAPTION[:100], False, 8, 32),  # hits the max length
    ],
)
def test_chain_equals_library(
    top: int,
    best_prompt: str,
    reverse: bool,
    min_count: int,
    max_count: int,
    library: LibraryInterrogator,
    interrogator: Interrogator,
    tables: LabelTables,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Direct chains toward the labels' mean direction, where every label scores high, as
    with a trained CLIP; the tiny model's image features make the start-score quirk moot."""
    image = interrogator._normalise(tables["flavors"].embeds.mean(axis=0))
    phrases = library.flavors.rank(image, top)
    phrases += phrases[:5]  # duplicates, which 0.6.0's set() drops
    best_sim = library.similarity(image, best_prompt) if best_prompt else 0
    theirs, ours = record_similarity_calls(monkeypatch, library, interrogator)
    expected = library.chain(
        image, phrases, best_prompt, best_sim, min_count, max_count, reverse=reverse
    )
    prompt = asyncio.run(
        interrogator._chain(image, phrases, best_prompt, best_sim, min_count, max_count, reverse)
    )
    assert prompt == expected
    assert ours == theirs
    if reverse:
        assert ", " not in prompt


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("top_count", [1, 7, 300, 2048])
def test_rank_equals_library(
    top_count: int,
    reverse: bool,
    clip: TinyClip,
    library: LibraryInterrogator,
    interrogator: Interrogator,
) -> None:
    """LabelTable.rank's chunked top-k, whose final re-rank ignores `reverse` (0.6.0 quirk)."""
    image = make_image(0)
    features = library.image_to_features(image)
    ours = interrogator._normalise(clip.image_features(image))
    merged = _merge_tables([getattr(library, name) for name in MERGED_TABLES], library)
    for name, table in [*((n, getattr(library, n)) for n in TABLE_NAMES), ("merged", merged)]:
        ranked = interrogator._merged if name == "merged" else interrogator._tables[name]
        got = [ranked.labels[i] for i in ranked.rank(ours, top_count, reverse)]
        assert got == table.rank(features, top_count, reverse), name


def test_caption_comes_from_captioner_like_library(
    clip: TinyClip,
    library: LibraryInterrogator,
    interrogator: Interrogator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blip_dir = make_blip(tmp_path / "blip")
    blip = BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
    processor = AutoProcessor.from_pretrained(blip_dir)
    image = make_image(2)
    monkeypatch.setattr(library, "caption_model", blip)
    monkeypatch.setattr(library, "caption_processor", processor)
    monkeypatch.setattr(library.config, "caption_model_name", "blip-base")
    expected = library.interrogate_fast(image)

    calls = []

    async def caption() -> str:  # what the BLIP service does for the entry service
        calls.append(1)
        inputs = processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            tokens = blip.generate(**inputs, max_new_tokens=32)
        return processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()

    features = clip.image_features(image)
    assert asyncio.run(interrogator.interrogate(features, "fast", captioner=caption)) == expected
    asyncio.run(interrogator.interrogate(features, "fast", caption="given", captioner=caption))
    assert len(calls) == 1
    with pytest.raises(ValueError, match="caption"):
        asyncio.run(interrogator.interrogate(features, "classic"))


@pytest.mark.parametrize("mode", [Mode.CLASSIC, Mode.FAST])
def test_empty_caption_is_used_like_library(
    mode: Mode,
    clip: TinyClip,
    library: LibraryInterrogator,
    interrogator: Interrogator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0.6.0 treats "" as missing and captions again; when BLIP itself says "", "" is used."""
    monkeypatch.setattr(library, "generate_caption", lambda image: "")
    image = make_image(4)
    expected = library_prompt(library, mode, image, None, {})
    features = clip.image_features(image)
    assert asyncio.run(interrogator.interrogate(features, mode, caption="")) == expected


def test_negative_flavor_counts_are_rejected(clip: TinyClip, interrogator: Interrogator) -> None:
    features = clip.image_features(make_image(0))
    with pytest.raises(ValueError, match="negative"):
        asyncio.run(interrogator.interrogate(features, "fast", caption="a", max_flavors=-1))


def test_analyze_ranks_like_library(
    clip: TinyClip, library: LibraryInterrogator, interrogator: Interrogator
) -> None:
    image = make_image(0)
    result = asyncio.run(interrogator.analyze(clip.image_features(image), top_k=5))
    image_features = library.image_to_features(image)
    assert tuple(result) == ANALYZE_TABLES
    for name, ranked in result.items():
        table = getattr(library, name)
        assert [label for label, _ in ranked] == table.rank(image_features, 5), name
        embeds = {label: e for label, e in zip(table.labels, table.embeds, strict=True)}
        for label, score in ranked:
            expected = float(image_features[0].numpy() @ embeds[label])
            assert score == pytest.approx(expected, abs=1e-6)
    empty = asyncio.run(interrogator.analyze(clip.image_features(image), top_k=0))
    assert empty == {name: [] for name in result}


def test_cache_is_reused_without_encoding(
    clip: TinyClip, tables: LabelTables, our_cache_dir: Path, subset_data: Path
) -> None:
    fresh = OpenClipTextEncoder(clip.ours)
    reloaded, cache = asyncio.run(build_tables(fresh, our_cache_dir, subset_data))
    assert fresh.calls == 0
    assert (cache.built, cache.loaded) == (0, len(TABLE_NAMES))
    assert reloaded.made_now == ()
    assert set(reloaded.origins.values()) == {"built"}  # the origin is kept in the file
    for name in TABLE_NAMES:
        np.testing.assert_array_equal(reloaded[name].embeds, tables[name].embeds)
        path = cache.path(tables[name].table)
        assert MODEL_KEY in path.name and name in path.name
        assert tables[name].table.hash[:16] in path.name


def _rewrite(path: Path, label_hash: str, embeds=lambda e: e, **meta: str) -> None:
    """Rewrite a cache file as LabelCache writes it, with the given changes."""
    stored = load_file(path)["embeds"]
    metadata = {"format": "clip-service-label-cache/1", "model_key": MODEL_KEY, "hash": label_hash}
    save_file({"embeds": embeds(stored)}, path, metadata=metadata | meta)


CORRUPTIONS = {
    "garbage": lambda path, h: path.write_bytes(b"not a safetensors file"),
    "truncated": lambda path, h: path.write_bytes(path.read_bytes()[:-100]),
    "hash": lambda path, h: _rewrite(path, h, hash="0" * 64),
    "model-key": lambda path, h: _rewrite(path, h, model_key="other-model"),
    "dtype": lambda path, h: _rewrite(path, h, lambda e: e.astype(np.float32)),
    "shape": lambda path, h: _rewrite(path, h, lambda e: e[:-1]),
    "non-finite": lambda path, h: _rewrite(path, h, lambda e: np.where(e > 0, np.inf, e)),
}


def test_cache_file_rewritten_unchanged_is_accepted(
    clip: TinyClip, tables: LabelTables, our_cache_dir: Path, subset_data: Path, tmp_path
) -> None:
    """Control for the corruption cases: only their change makes a file unusable."""
    shutil.copytree(our_cache_dir, tmp_path, dirs_exist_ok=True)
    fresh = OpenClipTextEncoder(clip.ours)
    table = tables["mediums"].table
    _rewrite(LabelCache(tmp_path, MODEL_KEY, fresh.encode_texts).path(table), table.hash)
    asyncio.run(build_tables(fresh, tmp_path, subset_data))
    assert fresh.calls == 0


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_cache_file_is_rebuilt(
    corrupt,
    clip: TinyClip,
    tables: LabelTables,
    our_cache_dir: Path,
    subset_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copytree(our_cache_dir, tmp_path, dirs_exist_ok=True)
    fresh = OpenClipTextEncoder(clip.ours)
    table = tables["mediums"].table
    corrupt(LabelCache(tmp_path, MODEL_KEY, fresh.encode_texts).path(table), table.hash)
    with caplog.at_level(logging.WARNING, logger="clip_service.interrogation.label_cache"):
        rebuilt, cache = asyncio.run(build_tables(fresh, tmp_path, subset_data))
    assert rebuilt.made_now == ("mediums",)
    assert (cache.built, cache.loaded, fresh.calls) == (1, 5, 1)
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(rebuilt["mediums"].embeds, tables["mediums"].embeds)
    again = OpenClipTextEncoder(clip.ours)
    asyncio.run(build_tables(again, tmp_path, subset_data))  # the rebuilt file is reused
    assert again.calls == 0


@pytest.mark.skipif(
    os.environ.get("INTERROGATION_FULL_DATA") != "1",
    reason="full ~112k-label parity takes ~3 min on 2 cores; set INTERROGATION_FULL_DATA=1",
)
def test_full_data_parity(clip: TinyClip, encoder: OpenClipTextEncoder, tmp_path) -> None:
    """Every installed label, our built tables on both sides."""
    tables, _ = asyncio.run(build_tables(encoder, tmp_path / "ours", None))
    cache = give_library(tables, tmp_path / "lib")
    library = LibraryInterrogator(
        library_config(clip, package_data_dir(), cache, caption_model_name=None)
    )
    for name in TABLE_NAMES:
        np.testing.assert_array_equal(tables[name].embeds, np.stack(getattr(library, name).embeds))
    interrogator = Interrogator(encoder, tables, InterrogatorSettings())
    image, caption = make_image(0), SHORT_CAPTION
    features = clip.image_features(image)
    expected = {
        Mode.BEST: library.interrogate(image, caption=caption),
        Mode.CLASSIC: library.interrogate_classic(image, caption=caption),
        Mode.FAST: library.interrogate_fast(image, caption=caption),
        Mode.NEGATIVE: library.interrogate_negative(image),
    }
    for mode, prompt in expected.items():
        assert asyncio.run(interrogator.interrogate(features, mode, caption=caption)) == prompt
