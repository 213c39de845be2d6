"""transformers ``CLIPModel``, ``SiglipModel`` and ``Siglip2Model`` checkpoints: Hub repo ids
and ``save_pretrained`` directories."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    BatchEncoding,
    CLIPModel,
    Siglip2Model,
    SiglipModel,
)
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from clip_service.models.clip import ClipModel, bias_value, log_to_scale
from clip_service.models.preprocess import PreprocessConfig, unpack_patches
from clip_service.models.specs import ClipSpec
from clip_service.models.text_prefix import PrefixLayer, PrefixTower


class TransformersClipModel(ClipModel):
    def __init__(
        self, spec: ClipSpec, device: torch.device, dtype: torch.dtype, trim_text: bool = True
    ) -> None:
        self.spec, self.device, self.dtype = spec, device, dtype
        model_type = AutoConfig.from_pretrained(spec.name).model_type
        if model_type not in _MODELS:
            raise ValueError(
                f"a transformers {model_type!r} model; served are "
                + ", ".join(f"{cls.__name__} ({name!r})" for name, cls in _MODELS.items())
            )
        self.model = AutoModel.from_pretrained(spec.name, dtype=dtype).to(device).eval()
        # SigLIP's text tower is bidirectional and read at its last position: texts are
        # padded to the whole context, as it was trained (and as transformers' docs say).
        self.trim_text = trim_text and isinstance(self.model, CLIPModel)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.name)
        self.image_processor = AutoImageProcessor.from_pretrained(spec.name)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        self.prefix_tower = _prefix_tower(self.model) if self.trim_text else None
        self.embedding_size = int(self.encode_texts([""]).shape[-1])

    @property
    def logit_scale(self) -> float:
        return log_to_scale(self.model.logit_scale)

    @property
    def logit_bias(self) -> float | None:
        return bias_value(getattr(self.model, "logit_bias", None))

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(kind="transformers", params=self.image_processor.to_dict())

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, Siglip2Model):  # patches, as preprocess.py packs them
            patches, mask, shapes = unpack_patches(pixels)
            return self.model.get_image_features(
                pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes
            ).pooler_output
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def _tokenize(self, texts: list[str], trim: bool) -> BatchEncoding:
        # Trimmed, padding to the longest text, not the context: CLIP's text tower is causal
        # and pools at the end-of-text token, so trailing padding changes only rounding.
        return self.tokenizer(
            texts,
            padding=True if trim else "max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )

    def _text_features(self, tokens: BatchEncoding, trim: bool) -> torch.Tensor:
        return self.model.get_text_features(**tokens.to(self.device)).pooler_output

    def _prefix_inputs(
        self, tokens: BatchEncoding
    ) -> tuple[PrefixTower, torch.Tensor, torch.Tensor] | None:
        if self.prefix_tower is None:
            return None
        ids = tokens["input_ids"].to(self.device)
        # CLIPTextModel's own pooling position: see its forward.
        eos = self.model.text_model.eos_token_id
        eot = ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)
        return self.prefix_tower, ids, eot

    def _count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]


_MODELS = {"clip": CLIPModel, "siglip": SiglipModel, "siglip2": Siglip2Model}


def _prefix_tower(model: CLIPModel) -> PrefixTower | None:
    """CLIPTextModel's layers taken apart for :mod:`clip_service.models.text_prefix`."""
    text = model.text_model
    layers = list(text.encoder.layers)
    if not all(
        type(layer) is CLIPEncoderLayer and type(layer.self_attn) is CLIPAttention
        for layer in layers
    ):
        return None

    def embed(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return text.embeddings(input_ids=ids, position_ids=positions[None])

    def head(pooled: torch.Tensor) -> torch.Tensor:
        return model.text_projection(text.final_layer_norm(pooled))

    return PrefixTower(
        embed=embed,
        layers=[
            PrefixLayer(
                norm1=layer.layer_norm1,
                qkv=_qkv(layer.self_attn),
                out=layer.self_attn.out_proj,
                heads=layer.self_attn.num_heads,
                scale1=nn.Identity(),
                norm2=layer.layer_norm2,
                mlp=layer.mlp,
                scale2=nn.Identity(),
            )
            for layer in layers
        ],
        head=head,
    )


def _qkv(attn: CLIPAttention) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    return lambda x: (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
