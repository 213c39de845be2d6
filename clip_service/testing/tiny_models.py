"""Tiny random-weight CLIP, open_clip and BLIP models in their real on-disk formats.

Tests and CI cannot download checkpoints, yet the service should be exercised through the same
public loading calls users' models go through (``CLIPModel.from_pretrained``,
``open_clip.create_model_and_transforms("local-dir:...")``, ``AutoProcessor.from_pretrained``...).
These generators write such directories offline in about a second each, with a few MB per model,
so nothing binary needs to be committed. The weights are random, so outputs are meaningless but
deterministic for a given seed.

    python -m clip_service.testing.tiny_models OUT_DIR
"""

import argparse
import gzip
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from safetensors.torch import save_file
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

__all__ = ["make_all", "make_blip", "make_hf_clip", "make_open_clip"]

_T = TypeVar("_T")

# Bump when the generated layout changes, so stale cached directories are regenerated.
_FORMAT_VERSION = 1
_MARKER = "tiny_model.json"

# ViT-B-32 geometry where preprocessing or tokenisation depends on it; tiny everywhere else.
_IMAGE_SIZE, _PATCH_SIZE = 224, 32
_CONTEXT_LENGTH, _CLIP_VOCAB_SIZE = 77, 49408
_VISION_WIDTH, _TEXT_WIDTH, _HEAD_WIDTH, _LAYERS, _EMBED_DIM = 64, 32, 16, 2, 32
# The text width stays at 32 because the 49408-row token embedding dominates the file size.

# ln(1/0.07), CLIP's initial temperature; transformers' own default is the rounded 2.6592.
_LOGIT_SCALE = math.log(1 / 0.07)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Filler vocabulary for the BLIP WordPiece tokenizer (bert-base-uncased is not available offline).
_BLIP_WORDS = """
. , ' - ! ? a an the this that these those some two three four many one of in on at with and or
by for from to under over near behind next front top inside outside into up down there is are
was be has have it its his her their while on
photo photograph picture image painting drawing sketch illustration render rendering poster
portrait landscape close view shot scene art artwork print cartoon anime comic digital oil
watercolor pencil canvas style frame background foreground detail
cat cats kitten dog dogs puppy bird birds horse cow sheep bear elephant giraffe zebra lion tiger
fish duck monkey rabbit fox wolf deer mouse owl
man men woman women boy girl child children baby person people couple family group crowd
player rider chef doctor king queen soldier
car cars truck bus train plane airplane boat ship bicycle bike motorcycle road street bridge
tower building house home city town village castle church room kitchen bedroom bathroom
office window door wall floor roof table chair couch sofa bed desk lamp shelf book books
computer laptop phone screen television clock vase bottle cup glass plate bowl food pizza
cake sandwich banana apple orange fruit vegetables flowers flower tree trees grass field
forest park garden beach sea ocean lake river water mountain mountains hill sky clouds sun
snow rain night sunset sunrise light shadow fire smoke stone rock sand road path fence sign
umbrella hat shirt dress jacket shoes bag ball kite frisbee skateboard surfboard skis
red blue green yellow black white brown gray grey orange pink purple golden silver dark
bright colorful old young small large big little tall long short beautiful cute happy sad
empty busy wooden metal glass plastic round square open closed wet dry hot cold
sitting standing walking running lying sleeping eating drinking holding playing riding
flying swimming looking wearing smiling reading driving parked covered filled made
very highly detailed realistic sharp focus soft blurry vintage modern abstract fantasy
trending artstation concept smooth intricate elegant cinematic lighting studio
"""


def make_hf_clip(out_dir: str | Path, *, seed: int = 0) -> Path:
    """transformers CLIP directory (``CLIPModel`` + ``CLIPProcessor`` via ``save_pretrained``).

    Loadable by ``CLIPModel.from_pretrained(dir)`` and ``CLIPProcessor`` / ``AutoProcessor`` /
    ``AutoImageProcessor`` / ``AutoTokenizer.from_pretrained(dir)``; the tokenizer is the real
    CLIP BPE, so it yields the same ids as open_clip's tokenizer.
    """

    def build(out: Path) -> None:
        config = CLIPConfig(
            text_config={
                **_transformer_dims(_TEXT_WIDTH),
                "vocab_size": _CLIP_VOCAB_SIZE,
                "max_position_embeddings": _CONTEXT_LENGTH,
                "pad_token_id": _CLIP_VOCAB_SIZE - 1,  # <|endoftext|>, as the tokenizer pads
                "projection_dim": _EMBED_DIM,
            },
            vision_config={
                **_transformer_dims(_VISION_WIDTH),
                "image_size": _IMAGE_SIZE,
                "patch_size": _PATCH_SIZE,
                "projection_dim": _EMBED_DIM,
            },
            projection_dim=_EMBED_DIM,
            logit_scale_init_value=_LOGIT_SCALE,
        )
        _seeded(seed, CLIPModel, config).save_pretrained(out)
        vocab, merges = _clip_bpe()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CONTEXT_LENGTH)
        # CLIPImageProcessor's defaults are the OpenAI ones; spelled out so they are visible.
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": _IMAGE_SIZE},
            crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
            image_mean=list(_OPENAI_MEAN),
            image_std=list(_OPENAI_STD),
        )
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        # The slow-tokenizer files the openai/clip-* repos also ship next to tokenizer.json.
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merge_lines = "\n".join(" ".join(m) for m in merges)
        (out / "merges.txt").write_text(f"#version: 0.2\n{merge_lines}\n", encoding="utf-8")

    return _generate(out_dir, "hf-clip", seed, build)


def make_open_clip(out_dir: str | Path, *, seed: int = 0) -> Path:
    """open_clip directory: ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    Loadable by ``open_clip.create_model_and_transforms(f"local-dir:{dir}")`` and
    ``open_clip.get_tokenizer(f"local-dir:{dir}")`` (the built-in CLIP BPE tokenizer, since the
    config names no ``hf_tokenizer_name``).
    """

    def build(out: Path) -> None:
        model_cfg = {
            "embed_dim": _EMBED_DIM,
            "quick_gelu": True,  # like OpenAI CLIP and transformers' CLIP (hidden_act=quick_gelu)
            "vision_cfg": {
                "image_size": _IMAGE_SIZE,
                "layers": _LAYERS,
                "width": _VISION_WIDTH,
                "head_width": _HEAD_WIDTH,
                "patch_size": _PATCH_SIZE,
            },
            "text_cfg": {
                "context_length": _CONTEXT_LENGTH,
                "vocab_size": _CLIP_VOCAB_SIZE,
                "width": _TEXT_WIDTH,
                "heads": _TEXT_WIDTH // _HEAD_WIDTH,
                "layers": _LAYERS,
            },
        }
        preprocess_cfg = {
            "mean": list(_OPENAI_MEAN),
            "std": list(_OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
        model = _seeded(seed, open_clip.CLIP, **model_cfg, init_logit_scale=_LOGIT_SCALE)
        # The first name open_clip 3.3's local-dir loader looks for (see _find_checkpoint_in_dir).
        save_file(model.state_dict(), out / "open_clip_model.safetensors")
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    return _generate(out_dir, "open-clip", seed, build)


def make_blip(out_dir: str | Path, *, seed: int = 0) -> Path:
    """transformers BLIP captioning directory laid out like Salesforce/blip-image-captioning-base.

    ``BlipForConditionalGeneration`` + ``BlipProcessor`` (WordPiece tokenizer over a few hundred
    English words, so random captions decode to words; image processor with the blip-base settings).
    """

    def build(out: Path) -> None:
        # bert-base-uncased's layout: specials first, then words; BLIP then adds [DEC] as bos
        # (the decoder start token generate() uses) and [ENC] (the encoder's start token).
        words = list(dict.fromkeys(_BLIP_WORDS.split()))
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
        tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        image_processor = BlipImageProcessor(
            size={"height": 384, "width": 384},
            image_mean=list(_OPENAI_MEAN),
            image_std=list(_OPENAI_STD),
        )
        BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        (out / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")

        width = _VISION_WIDTH
        config = BlipConfig(
            vision_config={
                **_transformer_dims(width),
                "image_size": 384,
                "patch_size": 16,
                "projection_dim": _EMBED_DIM,
                # blip's default (1e-10) makes every image embed alike; use the usual BERT-ish std.
                "initializer_range": 0.02,
            },
            text_config={
                **_transformer_dims(width),
                "encoder_hidden_size": width,
                "projection_dim": _EMBED_DIM,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": 512,
                "bos_token_id": tokenizer.bos_token_id,  # [DEC]: decoder start for generate()
                "sep_token_id": tokenizer.sep_token_id,  # [SEP]: generate()'s stop token
                "pad_token_id": tokenizer.pad_token_id,
                # blip-base leaves eos at an unused id (2); [SEP] is what captions really end with.
                "eos_token_id": tokenizer.sep_token_id,
            },
            projection_dim=_EMBED_DIM,
            image_text_hidden_size=_EMBED_DIM,
        )
        _seeded(seed, BlipForConditionalGeneration, config).save_pretrained(out)

    return _generate(out_dir, "blip", seed, build)


def make_all(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """All three formats, as the subdirectories ``hf-clip``, ``open-clip`` and ``blip``."""
    out = Path(out_dir)
    return {
        "hf-clip": make_hf_clip(out / "hf-clip", seed=seed),
        "open-clip": make_open_clip(out / "open-clip", seed=seed),
        "blip": make_blip(out / "blip", seed=seed),
    }


def _transformer_dims(width: int) -> dict[str, int]:
    """transformers config sizes for a tiny encoder of the given width (MLP ratio 4)."""
    return {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": width // _HEAD_WIDTH,
    }


def _seeded(seed: int, factory: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """Build a model with a fixed seed, leaving the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(*args, **kwargs)


def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, built exactly as open_clip's ``SimpleTokenizer`` builds them.

    Only the special tokens are renamed, to the ``<|startoftext|>`` / ``<|endoftext|>`` spelling
    of the openai/clip-* repos; their ids (49406, 49407) are unchanged.
    """
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = [
        *byte_chars,
        *(c + "</w>" for c in byte_chars),
        *("".join(m) for m in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    assert len(tokens) == _CLIP_VOCAB_SIZE
    return {t: i for i, t in enumerate(tokens)}, merges


def _generate(out_dir: str | Path, kind: str, seed: int, build: Callable[[Path], None]) -> Path:
    """Run ``build`` into ``out_dir`` unless it already holds this kind, seed and format version.

    The marker is removed before and written after building, so an interrupted run is redone.
    """
    out = Path(out_dir)
    marker = out / _MARKER
    expected = {"kind": kind, "seed": seed, "format": _FORMAT_VERSION}
    if marker.is_file():
        found = json.loads(marker.read_text(encoding="utf-8"))
        files = found.pop("files", [])
        if found == expected and all((out / name).is_file() for name in files):
            return out
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    build(out)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    marker.write_text(json.dumps({**expected, "files": files}, indent=2), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip_service.testing.tiny_models",
        description="Write tiny random-weight hf-clip, open-clip and blip models for tests.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the three models into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = parser.parse_args(argv)
    paths = {name: path.resolve() for name, path in make_all(args.out_dir, seed=args.seed).items()}
    for name, path in paths.items():
        print(f"{name:10s} {path}")
    print("\nUse them with e.g.:")
    print(f"  CLIP_MODEL=local-dir:{paths['open-clip']}")
    print(f"  CLIP_MODEL={paths['hf-clip']}")
    print(f"  CAPTION_MODEL={paths['blip']}")


if __name__ == "__main__":
    main()
