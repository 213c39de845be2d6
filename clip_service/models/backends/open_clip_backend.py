"""open_clip models: ``ARCH:tag``, ``hf-hub:org/repo`` and ``local-dir:PATH`` specs."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from torch import nn

from clip_service.models.clip import ClipModel, bias_value, log_to_scale
from clip_service.models.preprocess import PreprocessConfig
from clip_service.models.specs import ClipSpec
from clip_service.models.text_prefix import PrefixLayer, PrefixTower


class OpenClipModel(ClipModel):
    def __init__(
        self, spec: ClipSpec, device: torch.device, dtype: torch.dtype, trim_text: bool = True
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
        self.prefix_tower = _prefix_tower(self.model) if self.trim_text else None
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self.context_length = int(self.tokenizer.context_length)
        self.embedding_size = int(self.encode_texts([""]).shape[-1])

    @property
    def logit_scale(self) -> float:
        return log_to_scale(self.model.logit_scale)

    @property
    def logit_bias(self) -> float | None:
        # open_clip's CLIP and CustomTextCLIP have one when built with init_logit_bias:
        # its SigLIP configs (trained with SigLipLoss).
        return bias_value(getattr(self.model, "logit_bias", None))

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(kind="open_clip", params=dict(self.model.visual.preprocess_cfg))

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _tokenize(self, texts: list[str], trim: bool) -> torch.Tensor:
        return self.tokenizer(texts)  # always padded to the context: trimmed in the forward

    def _text_features(self, tokens: torch.Tensor, trim: bool) -> torch.Tensor:
        tokens = tokens.to(self.device)
        if trim and self.trim_text:
            return _encode_text_trimmed(self.model, tokens)
        return self.model.encode_text(tokens)

    def _prefix_inputs(
        self, tokens: torch.Tensor
    ) -> tuple[PrefixTower, torch.Tensor, torch.Tensor] | None:
        if self.prefix_tower is None:
            return None
        tokens = tokens.to(self.device)
        return self.prefix_tower, tokens, tokens.argmax(dim=-1)

    def _count_tokens(self, texts: Sequence[str]) -> list[int]:
        if isinstance(self.tokenizer, SimpleTokenizer):
            return [len(self.tokenizer.encode(text)) + 2 for text in texts]
        # open_clip's HFTokenizer wraps a transformers tokenizer that adds its own markers;
        # it cleans texts first (SigLIP: lower case, no punctuation), so count them cleaned.
        cleaned = [self.tokenizer.clean_fn(text) for text in texts]
        return [len(ids) for ids in self.tokenizer.tokenizer(cleaned)["input_ids"]]


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
    ~10 of the 77 positions, so this saves most of the work.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(
        cast_dtype
    )
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    return _head(model, text_global_pool(x, tokens, model.text_pool_type))


def _head(model: open_clip.CLIP, pooled: torch.Tensor) -> torch.Tensor:
    """``encode_text``'s final norm and projection, on the pooled (per-token) features."""
    x = model.ln_final(pooled)
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _prefix_tower(model: open_clip.CLIP) -> PrefixTower | None:
    """The standard text tower (ResidualAttentionBlock over nn.MultiheadAttention) taken
    apart for :mod:`clip_service.models.text_prefix`; None for any other block."""
    blocks = list(model.transformer.resblocks)
    if not all(_is_standard(block) for block in blocks):
        return None

    def embed(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cast_dtype = model.transformer.get_cast_dtype()  # read late: weights may be converted
        position = model.positional_embedding[positions]
        return model.token_embedding(ids).to(cast_dtype) + position.to(cast_dtype)

    layers = [
        PrefixLayer(
            norm1=block.ln_1,
            qkv=partial(_in_projection, block.attn),
            out=block.attn.out_proj,
            heads=block.attn.num_heads,
            scale1=block.ls_1,
            norm2=block.ln_2,
            mlp=block.mlp,
            scale2=block.ls_2,
        )
        for block in blocks
    ]
    return PrefixTower(embed=embed, layers=layers, head=partial(_head, model))


def _is_standard(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def _in_projection(attn: nn.MultiheadAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """nn.MultiheadAttention's packed q, k, v projection."""
    return list(F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
