"""Tiny random-weight SigLIP and SigLIP 2 models in open_clip's and transformers' formats.

The counterpart of :mod:`clip_service.testing.tiny_models` for the sigmoid-scored family:
each directory is what the real checkpoints ship (``timm/ViT-B-16-SigLIP*`` for open_clip,
``google/siglip-*`` and ``google/siglip2-*`` for transformers), written offline in seconds,
and loaded through the same public calls users' models go through
(``open_clip.create_model_and_transforms("local-dir:...")``, ``AutoModel`` /
``AutoProcessor.from_pretrained(dir)``).

What is real and what is a stand-in:

* open_clip: ``CustomTextCLIP`` with a timm image tower pooled by attention (``map``) and
  no projection, a bidirectional text tower read at its last token, a learned
  ``logit_bias``, and an HF tokenizer in the directory, as the SigLIP configs of open_clip
  3.3 have them. The timm trunk is timm's own tiny ``test_vit`` (160 px, patch 16) in place
  of ``vit_base_patch16_siglip_224``: open_clip passes no size options to timm, so only a
  named small trunk keeps the model tiny. SigLIP 2 differs by its tanh GELU in the text
  tower (and, for real models, by the Gemma tokenizer).
* transformers: ``SiglipModel`` + ``SiglipImageProcessor`` (fixed 224 px squash) and
  ``Siglip2Model`` + ``Siglip2ImageProcessor`` (variable patch grid, padded to
  ``max_num_patches``), as ``save_pretrained`` writes them.
* tokenizers: small stand-ins over a few hundred English words (the real SentencePiece and
  Gemma vocabularies are not available offline), saved as ``tokenizer.json`` (no
  ``sentencepiece`` needed). SigLIP's is a T5-style unigram model that ends every text with
  ``</s>`` and pads with it; SigLIP 2's is built by the real classes (``GemmaTokenizer``
  for open_clip, transformers' lower-casing ``Siglip2Tokenizer``) over a small BPE, with
  their own defaults (``<bos>`` first, ``<pad>`` on the left).

``logit_scale`` / ``logit_bias`` are set to log(10) / -1 rather than SigLIP's initial
log(10) / -10, so random models' sigmoid probabilities spread over (0, 1) instead of all
being ~5e-5: tests can then tell a sigmoid from a softmax.

    python -m clip_service.testing.tiny_siglip OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TypeVar

import open_clip
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    GemmaTokenizer,
    PreTrainedTokenizerFast,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2Processor,
    Siglip2Tokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)

from clip_service.testing.tiny_models import _BLIP_WORDS, _generate, _seeded

__all__ = ["make_all_siglip", "make_hf_siglip", "make_hf_siglip2", "make_open_clip_siglip"]

_Gemma = TypeVar("_Gemma", GemmaTokenizer, Siglip2Tokenizer)

_CONTEXT_LENGTH = 64  # every SigLIP and SigLIP 2 checkpoint's text length
_LOGIT_SCALE, _LOGIT_BIAS = math.log(10.0), -1.0
_MEAN = _STD = (0.5, 0.5, 0.5)
_WIDTH, _TEXT_WIDTH, _HEADS, _LAYERS = 64, 32, 2, 2
_TIMM_TRUNK, _TIMM_SIZE = "test_vit", 160  # timm's tiny ViT: width 64 = embedding size
# 256 patches: what Siglip2Processor asks of its image processor unless told otherwise.
_HF_IMAGE_SIZE, _PATCH_SIZE, _MAX_PATCHES = 224, 16, 256

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?:;()"


def make_open_clip_siglip(out_dir: str | Path, *, version: int = 1, seed: int = 0) -> Path:
    """open_clip directory laid out like ``timm/ViT-B-16-SigLIP`` (``version=2``:
    ``timm/ViT-B-16-SigLIP2``): ``open_clip_config.json``, ``open_clip_model.safetensors``
    and the tokenizer files that ``get_tokenizer("local-dir:...")`` reads."""
    if version not in (1, 2):
        raise ValueError(f"SigLIP version {version}: expected 1 or 2")

    def build(out: Path) -> None:
        tokenizer = _siglip_tokenizer() if version == 1 else _gemma_tokenizer(GemmaTokenizer)
        tokenizer.save_pretrained(out)
        text_cfg = {
            "context_length": _CONTEXT_LENGTH,
            "vocab_size": len(tokenizer),
            "hf_tokenizer_name": f"timm/ViT-B-16-SigLIP{'2' if version == 2 else ''}",
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": _TEXT_WIDTH,
            "heads": _HEADS,
            "layers": _LAYERS,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
            **({"act_kwargs": {"approximate": "tanh"}} if version == 2 else {}),
        }
        vision_cfg = {
            "image_size": _TIMM_SIZE,
            "timm_model_name": _TIMM_TRUNK,
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": "none",
        }
        model_cfg = {
            "embed_dim": _WIDTH,
            "init_logit_bias": -10,  # as in open_clip's SigLIP configs; overwritten below
            "custom_text": True,
            "vision_cfg": vision_cfg,
            "text_cfg": text_cfg,
        }
        # The hub configs' preprocessing: squash to the square input, mean/std 0.5.
        preprocess_cfg = {
            "mean": list(_MEAN),
            "std": list(_STD),
            "interpolation": "bicubic",
            "resize_mode": "squash",
        }
        model = _seeded(
            seed,
            open_clip.CustomTextCLIP,
            embed_dim=_WIDTH,
            vision_cfg=vision_cfg,
            text_cfg=text_cfg,
            init_logit_scale=_LOGIT_SCALE,
            init_logit_bias=_LOGIT_BIAS,
        )
        save_file(model.state_dict(), out / "open_clip_model.safetensors")
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    return _generate(out_dir, f"open-clip-siglip{version}", seed, build)


def make_hf_siglip(out_dir: str | Path, *, seed: int = 0) -> Path:
    """transformers directory laid out like ``google/siglip-base-patch16-224``:
    ``SiglipModel`` + ``SiglipProcessor`` (``SiglipImageProcessor``, fast tokenizer)."""

    def build(out: Path) -> None:
        tokenizer = _siglip_tokenizer()
        config = SiglipConfig(
            text_config=_text_config(tokenizer), vision_config=_vision_config(_HF_IMAGE_SIZE)
        )
        _save_model(_seeded(seed, SiglipModel, config), out)
        image_processor = SiglipImageProcessor(
            size={"height": _HF_IMAGE_SIZE, "width": _HF_IMAGE_SIZE},
            image_mean=list(_MEAN),
            image_std=list(_STD),
        )
        SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)

    return _generate(out_dir, "hf-siglip", seed, build)


def make_hf_siglip2(out_dir: str | Path, *, seed: int = 0) -> Path:
    """transformers directory laid out like ``google/siglip2-base-patch16-naflex``:
    ``Siglip2Model`` + ``Siglip2Processor`` (``Siglip2ImageProcessor``: each image resized to
    a patch grid of its own aspect ratio, at most ``max_num_patches`` patches)."""

    def build(out: Path) -> None:
        tokenizer = _gemma_tokenizer(Siglip2Tokenizer)
        vision = {**_vision_config(None), "num_patches": _MAX_PATCHES}
        config = Siglip2Config(text_config=_text_config(tokenizer), vision_config=vision)
        _save_model(_seeded(seed, Siglip2Model, config), out)
        image_processor = Siglip2ImageProcessor(
            patch_size=_PATCH_SIZE,
            max_num_patches=_MAX_PATCHES,
            image_mean=list(_MEAN),
            image_std=list(_STD),
        )
        Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)

    return _generate(out_dir, "hf-siglip2", seed, build)


def make_all_siglip(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """All four, as the subdirectories ``open-clip-siglip``, ``open-clip-siglip2``,
    ``hf-siglip`` and ``hf-siglip2``."""
    out = Path(out_dir)
    return {
        "open-clip-siglip": make_open_clip_siglip(out / "open-clip-siglip", seed=seed),
        "open-clip-siglip2": make_open_clip_siglip(out / "open-clip-siglip2", version=2, seed=seed),
        "hf-siglip": make_hf_siglip(out / "hf-siglip", seed=seed),
        "hf-siglip2": make_hf_siglip2(out / "hf-siglip2", seed=seed),
    }


def _words() -> list[str]:
    return [word for word in dict.fromkeys(_BLIP_WORDS.split()) if word.isalpha()]


def _siglip_tokenizer() -> PreTrainedTokenizerFast:
    """SigLIP's T5-style SentencePiece tokenizer in miniature: a unigram model over whole
    words (``▁word``) and single characters (so any text tokenizes); every text ends with
    ``</s>``, which also pads (ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, as in SigLIP)."""
    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [(token, 0.0) for token in specials]
    pieces += [(f"▁{word}", -2.0) for word in _words()]
    pieces += [(char, -10.0) for char in sorted({*_CHARS, "▁"})]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=_CONTEXT_LENGTH,
    )


def _gemma_tokenizer(cls: type[_Gemma]) -> _Gemma:
    """SigLIP 2's Gemma tokenizer in miniature, built by the real class (``GemmaTokenizer``
    for open_clip, transformers' lower-casing ``Siglip2Tokenizer``) from a small BPE: single
    characters, and each word merged from its first character on."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for char in sorted({*_CHARS, "▁"}):
        vocab[char] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _words():
        piece = "▁"
        for char in word:
            if piece + char not in vocab:
                merges.append((piece, char))
                vocab[piece + char] = len(vocab)
            piece += char
    return cls(vocab=vocab, merges=merges, model_max_length=_CONTEXT_LENGTH)


def _text_config(tokenizer: PreTrainedTokenizerFast | Siglip2Tokenizer) -> dict:
    return {
        "hidden_size": _TEXT_WIDTH,
        "intermediate_size": 4 * _TEXT_WIDTH,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": _CONTEXT_LENGTH,
        "projection_size": _WIDTH,  # the text head maps to the image tower's width
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }


def _vision_config(image_size: int | None) -> dict:
    config = {
        "hidden_size": _WIDTH,
        "intermediate_size": 4 * _WIDTH,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "patch_size": _PATCH_SIZE,
    }
    return config if image_size is None else {**config, "image_size": image_size}


def _save_model(model: SiglipModel | Siglip2Model, out: Path) -> None:
    with torch.no_grad():
        model.logit_scale.fill_(_LOGIT_SCALE)
        model.logit_bias.fill_(_LOGIT_BIAS)
    model.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip_service.testing.tiny_siglip",
        description="Write tiny random-weight SigLIP / SigLIP 2 models for tests.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the four models into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = parser.parse_args(argv)
    for name, path in make_all_siglip(args.out_dir, seed=args.seed).items():
        spec = f"local-dir:{path.resolve()}" if name.startswith("open-clip") else path.resolve()
        print(f"{name:18s} CLIP_MODEL={spec}")


if __name__ == "__main__":
    main()
