"""The upstream libraries called directly, as their users call them: the references the
parity checks compare the service with (``benchmarks/gpu_check.py``,
``benchmarks/interrogation_modes.py``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from clip_interrogator import Config
from clip_interrogator import Interrogator as LibraryInterrogator
from PIL import Image
from transformers import AutoProcessor, BlipForConditionalGeneration, CLIPModel, CLIPProcessor

MODES = ("fast", "classic", "negative", "best")
# Names 0.6.0's tokenizer (ViT-B-32's standard 77-token BPE, the models' own) and its
# cache files: {cache_path}/ViT-B-32_bench_{table}.safetensors.
LIBRARY_MODEL_NAME = "ViT-B-32/bench"


def library_interrogator(
    models: dict[str, Path], cache: Path, device: str = "cpu"
) -> LibraryInterrogator:
    """0.6.0's ``Interrogator`` on the given model directories, with the models in the
    precision it loads its own in on ``device`` (fp16 on CUDA, fp32 elsewhere)."""
    precision = "fp16" if device == "cuda" else "fp32"
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{models['open-clip']}", precision=precision, device=device
    )
    config = Config(
        clip_model_name=LIBRARY_MODEL_NAME,
        cache_path=str(cache),
        download_cache=False,
        device=device,
        quiet=True,
    )
    # 0.6.0 takes injected models as plain (non-init) attributes of its Config.
    config.clip_model, config.clip_preprocess = model.eval(), preprocess
    dtype = torch.float16 if device == "cuda" else torch.float32
    blip = BlipForConditionalGeneration.from_pretrained(models["blip"], dtype=dtype)
    config.caption_model = blip.eval().to(device)
    config.caption_processor = AutoProcessor.from_pretrained(models["blip"])
    return LibraryInterrogator(config)


@torch.inference_mode()
def open_clip_embeddings(
    model_dir: Path, texts: Sequence[str], images: Sequence[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's own fp32 model, tokenizer and preprocessing, on the CPU."""
    spec = f"local-dir:{model_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    model.eval()
    tokens = open_clip.get_tokenizer(spec)(list(texts))
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(png)).convert("RGB")) for png in images])
    return model.encode_text(tokens).numpy(), model.encode_image(pixels).numpy()


@torch.inference_mode()
def transformers_embeddings(
    model_dir: Path, texts: Sequence[str], images: Sequence[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own fp32 CLIPModel and CLIPProcessor, on the CPU."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    text_inputs = processor(text=list(texts), padding=True, return_tensors="pt")
    pil = [Image.open(io.BytesIO(png)).convert("RGB") for png in images]
    image_inputs = processor(images=pil, return_tensors="pt")
    text_features = model.get_text_features(**text_inputs)
    image_features = model.get_image_features(pixel_values=image_inputs["pixel_values"])
    return text_features.pooler_output.numpy(), image_features.pooler_output.numpy()
