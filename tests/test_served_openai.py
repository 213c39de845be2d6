"""``POST /v1/embeddings`` through the official ``openai`` client, against served tiny models."""

from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import open_clip
import openai
import pytest
from transformers import AutoTokenizer

from clip_service.errors import InvalidInput
from clip_service.server.openai_embeddings import to_item
from clip_service.settings import get_settings
from tests.conftest import b64, image_bytes, make_image

pytestmark = pytest.mark.served

TEXTS = ["a photo of a cat", "a diagram", "an oil painting of a harbour at dusk " * 12]
IMAGE = image_bytes(make_image(7, (96, 64)))
DATA_URI = "data:image/png;base64," + b64(IMAGE)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _encode(url: str, items: list[dict]) -> np.ndarray:
    response = httpx.post(f"{url}/encode", json=items, timeout=60)
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


def _vectors(response: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _assert_normalised_and_equal(served: np.ndarray, raw: np.ndarray) -> None:
    """Unit vectors in the direction of ``/encode``'s raw ones."""
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1, atol=1e-6)
    cosines = (served * raw).sum(1) / np.linalg.norm(raw, axis=1)
    assert cosines.min() >= 0.99999, cosines


def _tokens_read(server: str, tiny_models: dict) -> int:
    """TEXTS' tokens within the model's context, markers included, by the model's library."""
    if server == "open_clip_url":
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_models['open-clip']}")
        return int((tokenizer(TEXTS) != 0).sum())
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["hf-clip"]))
    return sum(map(sum, tokenizer(TEXTS, truncation=True, max_length=77)["attention_mask"]))


@pytest.mark.parametrize("server", ["open_clip_url", "hf_url"])
def test_texts_equal_encode_normalised_with_usage(server, request, tiny_models):
    url = request.getfixturevalue(server)
    response = _client(url).embeddings.create(
        input=TEXTS, model="any-name", encoding_format="float"
    )
    _assert_normalised_and_equal(_vectors(response), _encode(url, [{"text": t} for t in TEXTS]))
    assert response.model == httpx.get(f"{url}/model").json()["spec"]
    tokens = _tokens_read(server, tiny_models)
    assert tokens < 2 * 77 + len(TEXTS[2])  # the long text counts its first 77 tokens only
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)


def test_a_string_is_one_input(open_clip_url):
    response = _client(open_clip_url).embeddings.create(input=TEXTS[0], model="m")
    assert len(response.data) == 1
    _assert_normalised_and_equal(_vectors(response), _encode(open_clip_url, [{"text": TEXTS[0]}]))


def test_base64_is_little_endian_float32_of_the_float_answer(open_clip_url):
    client = _client(open_clip_url)
    floats = _vectors(client.embeddings.create(input=TEXTS, model="m", encoding_format="float"))
    default = client.embeddings.create(input=TEXTS, model="m")  # asks for base64, decodes it
    np.testing.assert_array_equal(_vectors(default), floats)
    raw = client.embeddings.create(input=TEXTS, model="m", encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]
    np.testing.assert_array_equal(np.stack(decoded), floats)


def test_images_by_data_uri_or_modality(open_clip_url):
    client = _client(open_clip_url)
    expected = _encode(open_clip_url, [{"text": TEXTS[0]}, {"img_blob": b64(IMAGE)}])
    mixed = client.embeddings.create(input=[TEXTS[0], DATA_URI], model="m")
    _assert_normalised_and_equal(_vectors(mixed), expected)
    text_only = client.embeddings.create(input=TEXTS[0], model="m")
    assert mixed.usage.prompt_tokens == text_only.usage.prompt_tokens  # the image counts 0
    image = client.embeddings.create(input=[DATA_URI], model="m", extra_body={"modality": "image"})
    _assert_normalised_and_equal(_vectors(image), expected[1:])
    as_text = "data:image/png;base64,AAAA"
    text = client.embeddings.create(input=as_text, model="m", extra_body={"modality": "text"})
    _assert_normalised_and_equal(_vectors(text), _encode(open_clip_url, [{"text": as_text}]))


def test_dimensions_may_only_repeat_the_model_size(open_clip_url):
    client = _client(open_clip_url)
    same = client.embeddings.create(input="a", model="m", dimensions=32)
    assert len(same.data[0].embedding) == 32
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(input="a", model="m", dimensions=16)
    assert re.match(r"^dimensions: .* embeddings have 32 dimensions", raised.value.body["message"])
    assert raised.value.param == "dimensions"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": []}, r"^input: must not be empty$"),
        ({"input": ""}, r"^input\[0\]: String should have at least 1 character"),
        ({"input": ["a", ""]}, r"^input\[1\]: String should have at least 1 character"),
        ({"input": ["a"] * (get_settings().max_items + 1)}, r"^input: at most \d+ items, got"),
        ({"input": [[1, 2], [3]]}, r"^input: token arrays are not supported"),
        ({"input": "data:image/png;base64,!!"}, r"^input\[0\]\.img_blob: not valid base64"),
        ({"input": "data:image/png;base64,aGVsbG8="}, r"^input\[0\]\.img_blob: not a readable"),
        (
            {"input": "a cat", "extra_body": {"modality": "image"}},
            r"^input\[0\]: an image must be a data:image/\.\.\.;base64, URI or an http",
        ),
        (
            {"input": "http://127.0.0.1:9/x.png", "extra_body": {"modality": "image"}},
            r"^input\[0\]\.img_uri: refused: 127\.0\.0\.1",
        ),
        ({"input": "a", "extra_body": {"modality": "audio"}}, r"^modality: Input should be"),
        ({"input": "a", "encoding_format": "int8"}, r"^encoding_format: Input should be"),
    ],
)
def test_bad_input_is_a_readable_400(open_clip_url, kwargs, message):
    """Errors in OpenAI's shape: the client's exception quotes the message and exposes the
    field at fault as ``param``."""
    with pytest.raises(openai.BadRequestError) as raised:
        _client(open_clip_url).embeddings.create(model="m", **kwargs)
    error = raised.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert re.match(message, error.body["message"]), error.body
    assert str(error) == f"Error code: 400 - {error.body['message']}"
    assert error.param == error.body["message"].split(": ")[0]


def test_a_text_over_max_text_chars_is_refused_with_its_index():
    with pytest.raises(InvalidInput, match=r"^input\[3\]: String should have at most"):
        to_item("x" * (get_settings().max_text_chars + 1), None, "input[3]")
