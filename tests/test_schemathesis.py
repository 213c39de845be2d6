"""Schemathesis against the served OpenAPI document (``/docs.json``) of a real server.

Every operation of the document is fuzzed with schema-conforming (positive) and
schema-violating (negative) requests, and each answer is checked: no 5xx, a documented
status code, a documented content type, a 2xx body that conforms to the document, a 4xx
body in the project's error shape (``{"error": "<field>: <problem>"}``), and negative
data refused.

Notes on the served document (BentoML 1.4 generates it):

* ``GET /model`` and ``POST /embeddings`` are routes of the mounted Starlette app, so the
  document does not list them and they are not fuzzed here (``test_served_corpus.py`` sends
  images through ``/embeddings``).
* Each API operation declares 200, 400, 404 and 500 only. ``413`` (body or image over the
  limits) is undeclared, so it is tolerated by the status-code check (the random bodies
  here stay far below the limits anyway).
* The declared 400 body (BentoML's ``InvalidArgument``) has ``detail: string``, but
  validation errors keep pydantic's ``detail`` list (docs/api.md, "Errors"): 4xx bodies are
  checked against the project's error shape instead, and the mismatch is
  ``test_validation_error_bodies_conform_to_the_served_document``.

``schemathesis.pytest.from_fixture`` (lazy loading) fails under pytest 9 (``'Function'
object has no attribute '_nodeid'``), so each test loads the document from the session
server and runs Hypothesis over the operation's strategy itself. Shrinking is off and the
runs are derandomized, so the suite is deterministic and bounded (~25 cases per operation
and mode).
"""

from __future__ import annotations

import base64
import io
import re
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from clip_service.testing.hostile_corpus import error_message

pytestmark = pytest.mark.served

MAX_EXAMPLES = 25
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)

# Every operation of the served document; a route added or dropped fails
# `test_the_document_lists_the_service_routes`, so this list (and the fuzzing) stays complete.
INFRA = ["GET /healthz", "GET /livez", "GET /readyz", "GET /metrics", "GET /model", "GET /meta"]
INFRA += ["GET /.well-known/live", "GET /.well-known/ready"]  # Weaviate's probes
INFRA += ["GET /interrogator/models"]  # the Stable Diffusion web UI's model list
APIS = [
    "POST /analyze",
    "POST /caption",
    "POST /classify",
    "POST /encode",
    "POST /extract_text",
    "POST /interrogate",
    "POST /rank",
    "POST /tag",
    "POST /vectorize",
    "POST /wearable",
    "POST /v1/embeddings",
    "POST /embeddings",
    "POST /jobs/interrogate",
    "POST /jobs/extract_text",
    "POST /label-tables",
    "POST /interrogator/prompt",
    "POST /interrogator/analyze",
    "POST /sdapi/v1/interrogate",
]
# Routes of a named job or table: any name is a 404 (positive cases are all there are).
JOBS = ["GET /jobs/{job_id}", "GET /jobs/{job_id}/result", "DELETE /jobs/{job_id}"]
JOBS += ["DELETE /label-tables/{name}", "GET /label-tables"]
# Their body is any string (text/plain, binary), or a form of any fields the caller names:
# no request violates the document, so they have no negative cases.
ANY_BODY_APIS = ["POST /extract_text", "POST /vectorize", "POST /jobs/extract_text"]
ANY_BODY_APIS += ["POST /embeddings"]
# Positive cases of these routes get real images in place of some generated ``img_blob``s
# (or raw bodies), so their 200 answers are checked against the document too. Schemathesis
# already puts real images in multipart binary fields (/tag, /wearable). Not /interrogate,
# /analyze and /extract_text: a first good image there builds the label-table embeddings
# (minutes on a CPU).
JSON_IMAGE_ROUTES = frozenset({"/encode", "/rank", "/caption", "/classify"})
RAW_IMAGE_ROUTES = frozenset({"/vectorize"})
SUCCESS_EXPECTED = [
    "POST /caption",
    "POST /encode",
    "POST /rank",
    "POST /tag",
    "POST /vectorize",
    "POST /wearable",
    "POST /v1/embeddings",
]
# An http(s) URL never reaches DNS: every generated ``img_uri`` that could name a scheme
# (it contains ":") is replaced by this loopback URL, which the server refuses unfetched.
SAFE_URI = "http://127.0.0.1:9/fuzz.png"
ITEM_FIELDS = frozenset({"text", "img_uri", "img_blob"})


def _image_b64(fmt: str, size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


GOOD_BLOBS = [
    _image_b64("PNG", (16, 16)),
    _image_b64("JPEG", (40, 24)),
    "data:image/gif;base64," + _image_b64("GIF", (8, 8)),
]


@pytest.fixture(scope="module")
def api_schema(open_clip_url):
    return schemathesis.openapi.from_url(f"{open_clip_url}/docs.json", timeout=30)


@pytest.fixture(scope="module")
def tally(request) -> Iterator[Counter]:
    """(operation, mode, status) -> cases; the totals are printed at the end of the module."""
    counts: Counter = Counter()
    yield counts
    total = sum(counts.values())
    statuses = Counter()
    for (_, _, status), n in counts.items():
        statuses[status] += n
    operations = len({label for label, _, _ in counts})
    line = (
        f"schemathesis: {total} cases over {operations} operations, "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    print(line)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")


def test_the_document_lists_the_service_routes(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == {*INFRA, *APIS, *JOBS}


def _walk_items(body: object) -> Iterator[dict]:
    """Every dict in a JSON body (image items are dicts with img_blob / img_uri)."""
    if isinstance(body, dict):
        yield body
        for value in body.values():
            yield from _walk_items(value)
    elif isinstance(body, list):
        for value in body:
            yield from _walk_items(value)


def _make_safe(case) -> None:
    for item in _walk_items(case.body):
        uri = item.get("img_uri")
        if isinstance(uri, str) and ":" in uri:
            item["img_uri"] = SAFE_URI
        # The web UI routes' image is a string, base64 or an http(s) URL.
        image = item.get("image")
        if isinstance(image, str) and ":" in image:
            item["image"] = SAFE_URI


def _inject_images(case, path: str, data: st.DataObject) -> None:
    if path in RAW_IMAGE_ROUTES and data.draw(st.booleans(), label="real image body"):
        case.body = base64.b64decode(GOOD_BLOBS[data.draw(st.sampled_from([0, 1]))])
    elif path in JSON_IMAGE_ROUTES:
        # Either make every item valid (an image, or its text when that is all it has), or
        # swap real images in for some generated blobs, next to whatever else was generated.
        repair = data.draw(st.booleans(), label="all items valid")
        for item in _walk_items(case.body):
            if repair and item.keys() <= ITEM_FIELDS:
                given = {key for key, value in item.items() if value}
                if given != {"text"}:
                    item.clear()
                    item["img_blob"] = data.draw(st.sampled_from(GOOD_BLOBS))
            elif isinstance(item.get("img_blob"), str) and data.draw(st.booleans()):
                item["img_blob"] = data.draw(st.sampled_from(GOOD_BLOBS), label="real img_blob")


def _assert_error_shape(response: requests.Response) -> None:
    """The 4xx shape (docs/api.md): an ``error`` that names a field (in OpenAI's shape on
    the OpenAI-compatible route)."""
    body = response.json()
    error = error_message(body, urlparse(response.request.url).path)
    assert error is not None, body
    field, separator, problem = error.partition(": ")
    assert field and separator and problem, f"error names no field: {error!r}"


def _checks(response: requests.Response, mode: GenerationMode) -> list:
    checks = [not_a_server_error, content_type_conformance]
    # Undeclared by BentoML's document: 413 (see the docstring), and a job's 202 (its
    # document has a 200 alone; the body is that 200's schema, checked in the tests).
    if response.status_code not in (413, 202):
        checks.append(status_code_conformance)
    if not 400 <= response.status_code < 500 and response.status_code != 202:
        checks.append(response_schema_conformance)
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    return checks


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in INFRA + ANY_BODY_APIS + JOBS]
    + [(label, mode) for label in APIS if label not in ANY_BODY_APIS for mode in GenerationMode],
    ids=lambda value: str(value),
)
def test_fuzz_operation(api_schema, open_clip_url, tally, label, mode):
    method, path = label.split(" ")
    operation = api_schema[path][method]
    statuses: Counter = Counter()

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @HYPOTHESIS
    def run(case, data):
        _make_safe(case)
        if mode is GenerationMode.POSITIVE:
            _inject_images(case, path, data)
        response = case.call(base_url=open_clip_url, timeout=120)
        statuses[response.status_code] += 1
        tally[label, mode.value, response.status_code] += 1
        case.validate_response(response, checks=_checks(response, mode))
        if 400 <= response.status_code < 500:
            _assert_error_shape(response)

    run()
    print(f"{label} {mode.value}: {sum(statuses.values())} cases, statuses {dict(statuses)}")
    assert statuses
    if mode is GenerationMode.POSITIVE and label in SUCCESS_EXPECTED:
        assert statuses[200], f"no 200 among the positive cases: {dict(statuses)}"


def _validate(operation, response: requests.Response) -> None:
    operation.Case(media_type="application/json").validate_response(
        response, checks=[response_schema_conformance]
    )


def test_validation_error_bodies_conform_to_the_served_document(api_schema, open_clip_url):
    response = requests.post(f"{open_clip_url}/encode", json=[{"txt": "a"}], timeout=30)
    assert response.status_code == 400, response.text
    assert re.match(r"^body\[0\]\.txt: Extra inputs", response.json()["error"])
    _validate(api_schema["/encode"]["POST"], response)
