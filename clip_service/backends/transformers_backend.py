"""transformers ``CLIPModel`` checkpoints: Hub repo ids and ``save_pretrained`` directories."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoImageProcessor, AutoTokenizer, BatchEncoding, CLIPModel

from ..clip_model import ClipModel, log_to_scale
from ..preprocess import PreprocessConfig
from ..specs import ClipSpec


class TransformersClipModel(ClipModel):
    def __init__(self, spec: ClipSpec, device: torch.device, dtype: torch.dtype) -> None:
        self.spec, self.device, self.dtype = spec, device, dtype
        self.model = CLIPModel.from_pretrained(spec.name, dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(spec.name)
        self.image_processor = AutoImageProcessor.from_pretrained(spec.name)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        self.embedding_size = int(self.model.config.projection_dim)

    @property
    def logit_scale(self) -> float:
        return log_to_scale(self.model.logit_scale)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(kind="transformers", params=self.image_processor.to_dict())

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def _tokenize(self, texts: list[str]) -> BatchEncoding:
        # Padding to the longest text, not the context: CLIP's text tower is causal and
        # pools at the end-of-text token, so trailing padding never changes the output.
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )

    def _text_features(self, tokens: BatchEncoding) -> torch.Tensor:
        return self.model.get_text_features(**tokens.to(self.device)).pooler_output

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
