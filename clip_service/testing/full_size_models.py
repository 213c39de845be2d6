"""Full-size random-weight ViT-B-32 CLIP and BLIP-base models in their real on-disk formats.

Speed does not depend on weight values, so these stand in for the real checkpoints (which
cannot be downloaded here) in the benchmarks. Same layout as ``clip_service.testing.tiny_models``
(whose helpers this reuses), so every benchmark takes either:

* ``open-clip/``: open_clip local-dir format (``open_clip_config.json`` +
  ``open_clip_model.safetensors``), ViT-B-32 with QuickGELU, as OpenAI's;
* ``hf-clip/``: the SAME weights as a transformers ``CLIPModel`` directory with the real CLIP
  tokenizer and image processor (embeddings equal open_clip's; checked after writing);
* ``blip/``: ``BlipForConditionalGeneration`` with Salesforce/blip-image-captioning-base's
  configuration and a 30,524-token WordPiece vocabulary of single-CLIP-token English words
  (random captions then have realistic CLIP token counts).

    python -m clip_service.testing.full_size_models [OUT_DIR]     # default /work/bench-models

About 1.3 GB; regenerated only when missing or stale (marker files, as tiny_models).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
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

from clip_service.testing.tiny_models import (
    _CONTEXT_LENGTH,
    _LOGIT_SCALE,
    _OPENAI_MEAN,
    _OPENAI_STD,
    _clip_bpe,
    _generate,
    _seeded,
)

DEFAULT_OUT = Path("/work/bench-models")

# open_clip's ViT-B-32 (model_configs/ViT-B-32.json) with OpenAI's QuickGELU.
VIT_B_32 = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {
        "context_length": _CONTEXT_LENGTH,
        "vocab_size": 49408,
        "width": 512,
        "heads": 8,
        "layers": 12,
    },
}
_VISION_HEADS = 12  # open_clip: width 768 / head_width 64


def make_open_clip(out_dir: Path, *, seed: int = 0) -> Path:
    """open_clip local-dir ViT-B-32 (random weights)."""

    def build(out: Path) -> None:
        model = _seeded(seed, open_clip.CLIP, **VIT_B_32, init_logit_scale=_LOGIT_SCALE)
        save_file(model.state_dict(), out / "open_clip_model.safetensors")
        preprocess_cfg = {
            "mean": list(_OPENAI_MEAN),
            "std": list(_OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
        config = {"model_cfg": VIT_B_32, "preprocess_cfg": preprocess_cfg}
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    return _generate(out_dir, "full-open-clip-vit-b-32", seed, build)


def make_hf_clip(out_dir: Path, open_clip_dir: Path, *, seed: int = 0) -> Path:
    """transformers CLIPModel directory holding ``open_clip_dir``'s weights."""

    def build(out: Path) -> None:
        vision, text = VIT_B_32["vision_cfg"], VIT_B_32["text_cfg"]
        config = CLIPConfig(
            text_config={
                "hidden_size": text["width"],
                "intermediate_size": 4 * text["width"],
                "num_hidden_layers": text["layers"],
                "num_attention_heads": text["heads"],
                "vocab_size": text["vocab_size"],
                "max_position_embeddings": text["context_length"],
                "pad_token_id": text["vocab_size"] - 1,
                "projection_dim": VIT_B_32["embed_dim"],
            },
            vision_config={
                "hidden_size": vision["width"],
                "intermediate_size": 4 * vision["width"],
                "num_hidden_layers": vision["layers"],
                "num_attention_heads": _VISION_HEADS,
                "image_size": vision["image_size"],
                "patch_size": vision["patch_size"],
                "projection_dim": VIT_B_32["embed_dim"],
            },
            projection_dim=VIT_B_32["embed_dim"],
            logit_scale_init_value=_LOGIT_SCALE,
        )
        model = CLIPModel(config)
        state = open_clip_to_hf(load_file(open_clip_dir / "open_clip_model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise RuntimeError(f"weight mapping: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(out)
        vocab, merges = _clip_bpe()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CONTEXT_LENGTH)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": vision["image_size"]},
            crop_size={"height": vision["image_size"], "width": vision["image_size"]},
            image_mean=list(_OPENAI_MEAN),
            image_std=list(_OPENAI_STD),
        )
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merge_lines = "\n".join(" ".join(m) for m in merges)
        (out / "merges.txt").write_text(f"#version: 0.2\n{merge_lines}\n", encoding="utf-8")
        check_same_embeddings(open_clip_dir, out)

    return _generate(out_dir, "full-hf-clip-vit-b-32", seed, build)


def open_clip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP (ViT) state dict -> transformers CLIPModel state dict."""
    out: dict[str, torch.Tensor] = {
        "logit_scale": state["logit_scale"],
        "visual_projection.weight": state["visual.proj"].T.contiguous(),
        "text_projection.weight": state["text_projection"].T.contiguous(),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
    }
    for src, dst in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ):
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = state[f"{src}.{p}"]
    block = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
    names = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for key, value in state.items():
        match = block.match(key)
        if not match:
            continue
        tower = "vision_model" if match[1] else "text_model"
        prefix, rest = f"{tower}.encoder.layers.{match[2]}", match[3]
        if rest.startswith("attn.in_proj_"):
            kind = rest.removeprefix("attn.in_proj_")  # weight or bias
            for name, part in zip(("q", "k", "v"), value.chunk(3), strict=True):
                out[f"{prefix}.self_attn.{name}_proj.{kind}"] = part.contiguous()
            continue
        module, param = rest.rsplit(".", 1)
        out[f"{prefix}.{names[module]}.{param}"] = value
    return out


@torch.inference_mode()
def check_same_embeddings(open_clip_dir: Path, hf_dir: Path) -> None:
    """Both formats must give the same image and text embeddings (cosine > 0.9999)."""
    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    tokens = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")(["a photo of a cat"])
    hf = CLIPModel.from_pretrained(hf_dir).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8))
    pixels = preprocess(image).unsqueeze(0)
    pairs = {
        "image": (oc.eval().encode_image(pixels), hf.get_image_features(pixel_values=pixels)),
        "text": (oc.encode_text(tokens), hf.get_text_features(input_ids=tokens)),
    }
    for name, (a, b) in pairs.items():
        b = getattr(b, "pooler_output", b)  # transformers 5 may return an output object
        cosine = torch.nn.functional.cosine_similarity(a, b).item()
        if cosine < 0.9999:
            raise RuntimeError(f"{name} embeddings differ between formats: cosine {cosine}")


def make_blip(out_dir: Path, *, seed: int = 0) -> Path:
    """BLIP-base captioning directory (random weights, blip-base geometry)."""

    def build(out: Path) -> None:
        vocab_size = 30524  # blip-base: bert-base-uncased's 30,522 plus [DEC] and [ENC]
        specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]"]
        specials.append("[MASK]")  # ids as in bert-base-uncased: [SEP] = 102 (BLIP's stop)
        words = clip_single_token_words()[: vocab_size - 2 - len(specials)]
        vocab = {t: i for i, t in enumerate([*specials, *words])}
        tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(tokenizer) != vocab_size:
            raise RuntimeError(f"BLIP vocabulary has {len(tokenizer)} tokens, not {vocab_size}")
        image_processor = BlipImageProcessor(
            size={"height": 384, "width": 384},
            image_mean=list(_OPENAI_MEAN),
            image_std=list(_OPENAI_STD),
        )
        BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        (out / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
        encoder = {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "initializer_range": 0.02,
        }
        config = BlipConfig(
            vision_config={**encoder, "image_size": 384, "patch_size": 16},
            text_config={
                **encoder,
                "encoder_hidden_size": 768,
                "vocab_size": vocab_size,
                "max_position_embeddings": 512,
                "bos_token_id": tokenizer.bos_token_id,
                "sep_token_id": tokenizer.sep_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.sep_token_id,
            },
            projection_dim=512,
            image_text_hidden_size=256,
        )
        _seeded(seed, BlipForConditionalGeneration, config).save_pretrained(out)

    return _generate(out_dir, "full-blip-base", seed, build)


def clip_single_token_words() -> list[str]:
    """Lower-case words that CLIP's BPE encodes as one token each, in vocabulary order."""
    vocab, _ = _clip_bpe()
    return [t[:-4] for t in vocab if t.endswith("</w>") and re.fullmatch(r"[a-z]{2,}", t[:-4])]


def make_all(out_dir: Path, *, seed: int = 0) -> dict[str, Path]:
    """``open-clip``, ``hf-clip`` (same weights) and ``blip`` under ``out_dir``."""
    open_clip_dir = make_open_clip(out_dir / "open-clip", seed=seed)
    return {
        "open-clip": open_clip_dir,
        "hf-clip": make_hf_clip(out_dir / "hf-clip", open_clip_dir, seed=seed),
        "blip": make_blip(out_dir / "blip", seed=seed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in make_all(args.out_dir, seed=args.seed).items():
        print(f"{name:10s} {path.resolve()}")


if __name__ == "__main__":
    main()
