"""``POST /v1/embeddings``: OpenAI's embeddings API over the CLIP encoder, texts and images.

OpenAI clients (the ``openai`` package is tested) work unchanged against ``{server}/v1``.
Each input string is one item of ``/encode``, so validation, image fetching and decoding,
limits and batching are the same; the differences are OpenAI's:

* embeddings are L2-normalised (``/encode`` returns raw model outputs), in ``float`` lists
  or ``base64`` little-endian float32 (what the ``openai`` client asks for by default);
* ``model`` is accepted whatever it names: one model is served, and the answer says which;
* ``dimensions`` may only repeat the model's own size (CLIP vectors cannot be shortened);
* ``usage`` counts the text tokens the model read (at most its context per text, start and
  end markers included); images count 0, as they are not tokens.

Which strings are images follows infinity-emb's ``modality`` extension field (sent with the
client's ``extra_body``): ``"text"`` embeds every string as text, ``"image"`` reads every
string as an image (a ``data:image/...;base64,`` URI or an http(s) URL). Without it, a
string that starts with ``data:image/`` is an image and everything else is text, so one
list may mix both (infinity-emb embeds them as text); that prefix never starts a text anyone
means to embed, whereas a URL might be, so URLs are images only with ``modality: "image"``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, RootModel, ValidationError
from pydantic_core import PydanticCustomError

from clip_service.errors import InvalidInput
from clip_service.models.ranking import l2_normalize
from clip_service.server.encoding import ItemEncoder
from clip_service.server.limits import check_url_items
from clip_service.server.schemas import Item
from clip_service.settings import get_settings

# The item limit is part of the OpenAPI document, so it is read when the routes are declared.
_settings = get_settings()

EncodingFormat = Literal["float", "base64"]
Modality = Literal["text", "image"]
_DATA_IMAGE = "data:image/"
# LangChain's OpenAIEmbeddings sends tiktoken ids unless told not to; CLIP has its own
# tokenizer, so only the texts can be embedded.
TOKEN_ARRAYS = (
    "token arrays are not supported (CLIP tokenizes texts itself); send strings. "
    "LangChain's OpenAIEmbeddings sends token ids by default: "
    "set check_embedding_ctx_length=False"
)
_URL_SCHEMES = ("http://", "https://")


def _check_input(value: object) -> object:
    """One clear message for a bad list; the ``str | list[str]`` union would give two."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("input_type", "must be a string or a list of strings")
    if not value:
        raise PydanticCustomError("too_short", "must not be empty")
    if len(value) > _settings.max_items:
        raise PydanticCustomError(
            "too_long",
            "at most {limit} items, got {count}",
            {"limit": _settings.max_items, "count": len(value)},
        )
    for i, element in enumerate(value):
        if isinstance(element, int | list):
            raise PydanticCustomError("token_arrays", TOKEN_ARRAYS)
        if not isinstance(element, str):
            raise PydanticCustomError("string_type", "item {index} is not a string", {"index": i})
    return value


# A model of its own, so that the OpenAPI document refers to it: BentoML keeps only the first
# member of a union written on a parameter, and would document a string only.
class EmbeddingInput(
    RootModel[
        Annotated[
            str | Annotated[list[str], Field(min_length=1, max_length=_settings.max_items)],
            BeforeValidator(_check_input),
        ]
    ]
):
    """A string or a list of strings: texts, and images as data:image/ URIs (or, with
    modality image, http(s) URLs)."""


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="L2-normalised; base64 of little-endian float32 with encoding_format base64"
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="text tokens read by the model; images count 0")
    total_tokens: int


class EmbeddingsResult(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="the served model's spec, whatever the request named")
    usage: Usage


def to_item(value: str, modality: Modality | None, field: str) -> Item:
    """One input string -> the ``/encode`` item it stands for (module docstring's rule)."""
    is_data_uri = value[: len(_DATA_IMAGE)].lower() == _DATA_IMAGE
    if modality == "text" or (modality is None and not is_data_uri):
        fields = {"text": value}
    elif is_data_uri:
        fields = {"img_blob": value}
    elif value[:8].lower().startswith(_URL_SCHEMES):
        fields = {"img_uri": value}
    else:
        raise InvalidInput(field, "an image must be a data:image/...;base64, URI or an http(s) URL")
    try:
        return Item(**fields)
    except ValidationError as exc:  # the item's own limits: empty, too long
        raise InvalidInput(field, exc.errors()[0]["msg"]) from None


def encode_vector(vector: np.ndarray, encoding_format: EncodingFormat) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class OpenAIEmbeddings:
    def __init__(self, items: ItemEncoder) -> None:
        self.items = items

    async def create(
        self,
        inputs: EmbeddingInput,
        encoding_format: EncodingFormat = "float",
        dimensions: int | None = None,
        modality: Modality | None = None,
    ) -> EmbeddingsResult:
        strings = [inputs.root] if isinstance(inputs.root, str) else inputs.root
        info = await self.items.model_info()
        if dimensions is not None and dimensions != info.embedding_size:
            raise InvalidInput(
                "dimensions",
                f"{info.spec} embeddings have {info.embedding_size} dimensions; "
                f"send {info.embedding_size} or omit it",
            )
        items = [to_item(value, modality, f"input[{i}]") for i, value in enumerate(strings)]
        check_url_items(items, "input", self.items.settings.max_url_items)
        texts = [item.text for item in items if item.text is not None]
        vectors, counts = await asyncio.gather(
            self.items.encode_items(items, "input"), self._count_tokens(texts)
        )
        tokens = sum(min(count, info.context_length) for count in counts)
        return EmbeddingsResult(
            data=[
                Embedding(index=i, embedding=encode_vector(vector, encoding_format))
                for i, vector in enumerate(l2_normalize(vectors))
            ],
            model=info.spec,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def _count_tokens(self, texts: list[str]) -> list[int]:
        return await self.items.encoder.count_tokens(texts) if texts else []
