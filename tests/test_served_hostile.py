"""The hostile corpus (clip_service.testing.hostile_corpus) against a served instance, one request
at a time: each named bad request gets exactly its 4xx, in the one error shape, naming its
field; each good request gets a 200. These are the regression tests for what issue 12's
corpus and this project's fuzzing found through HTTP (500s from Pillow plugins on every
image route, templates, long file names, malformed forms, forms on /v1/embeddings)."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from clip_service.testing.hostile_corpus import bad_requests, cosine, error_message, good_requests

pytestmark = pytest.mark.served

TIMEOUT = 120
BAD = {request.name: request for request in bad_requests()}
GOOD = {request.name: request for request in good_requests(images=1)}


def post(url: str, request) -> httpx.Response:
    return httpx.post(
        url + request.path, content=request.body, headers=request.headers, timeout=TIMEOUT
    )


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_is_refused_naming_its_field(open_clip_url, name):
    request = BAD[name]
    response = post(open_clip_url, request)
    assert response.status_code == request.status, response.text
    body = response.json()
    message = error_message(body, request.path)
    assert message is not None, body
    field, separator, problem = message.partition(": ")
    assert separator and problem, body
    assert re.fullmatch(request.names, field), body


@pytest.mark.parametrize("name", list(GOOD))
def test_good_request_is_answered(open_clip_url, name):
    response = post(open_clip_url, GOOD[name])
    assert response.status_code == 200, response.text


def test_base64_wrapped_by_the_base64_command_gives_the_same_vector(open_clip_url):
    plain = post(open_clip_url, GOOD["encode-image-0"]).json()
    wrapped = post(open_clip_url, GOOD["encode-wrapped-base64-0"]).json()
    raw = post(open_clip_url, GOOD["vectorize-0"]).json()
    assert cosine(np.asarray(plain), np.asarray(wrapped)) > 0.99999
    assert cosine(np.asarray(plain[0]), np.asarray(raw["vector"])) > 0.99999


def test_a_file_name_too_long_for_the_file_system_is_no_problem(open_clip_url):
    response = post(open_clip_url, GOOD["tag-long-file-name-0"])
    assert response.status_code == 200, response.text
    assert [tag["group"] for tag in response.json()["tags"]] == ["type", "fur"]
