"""open_clip models: ``ARCH:tag``, ``hf-hub:org/repo`` and ``local-dir:PATH`` specs."""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import text_global_pool

from ..clip_model import ClipModel, log_to_scale
from ..preprocess import PreprocessConfig
from ..specs import ClipSpec


class OpenClipModel(ClipModel):
    def __init__(
        self, spec: ClipSpec, device: torch.device, dtype: torch.dtype, trim_text: bool = False
    ) -> None:
        self.spec, self.device, self.dtype = spec, device, dtype
        model, _, _ = open_clip.create_model_and_transforms(
            spec.name,
            pretrained=spec.pretrained,
            precision="fp16" if dtype == torch.float16 else "fp32",
            device=device,
        )
        self.model = model.eval()
        self.trim_text = trim_text and _can_trim(self.model)
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self.context_length = int(self.tokenizer.context_length)
        self.embedding_size = int(self.encode_texts([""]).shape[-1])

    @property
    def logit_scale(self) -> float:
        return log_to_scale(self.model.logit_scale)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(kind="open_clip", params=dict(self.model.visual.preprocess_cfg))

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        if self.trim_text:
            return _encode_text_trimmed(self.model, tokens)
        return self.model.encode_text(tokens)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if isinstance(self.tokenizer, SimpleTokenizer):
            return [len(self.tokenizer.encode(text)) + 2 for text in texts]
        # open_clip's HFTokenizer wraps a transformers tokenizer that adds its own markers.
        return [len(ids) for ids in self.tokenizer.tokenizer(list(texts))["input_ids"]]


def _can_trim(model: torch.nn.Module) -> bool:
    """A CLIP whose text tower is causal and pools at the end-of-text token."""
    return (
        isinstance(model, open_clip.CLIP)
        and model.text_pool_type == "argmax"
        and model.attn_mask is not None
    )


def _encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text``, run only up to the batch's longest text.

    The text transformer is causal and the output is read at the end-of-text token (the
    highest id, so ``argmax``); positions after it, all padding, are never seen by it, so
    the result differs only by float rounding (max abs diff ~2e-6). Label-like texts are
    ~10 of the 77 positions, so this saves most of the work. Off by default: rounding
    differences can flip near-ties among clip-interrogator's float16 label embeddings.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(
        cast_dtype
    )
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection
