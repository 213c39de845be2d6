"""Fuzz every route's body against a served instance: only 2xx and 4xx, never a 5xx or a hang.

Beyond tests/test_schemathesis.py (schema-driven JSON), Hypothesis writes the bodies byte by
byte here, for every route (the Starlette-mounted /embeddings too):

* JSON shaped like the route's (items, images, labels, templates, modes, OpenAI fields)
  with any value swapped for another JSON value, extra keys, wrong types, huge numbers;
* multipart forms with odd, empty, non-UTF-8, 300- and 5,000-character names and file
  names, quotes, duplicated fields, texts where files go and files where texts go, odd or
  missing boundaries, bare LF line ends, truncated bodies, and images good and hostile;
* raw and url-encoded bodies under any Content-Type.

Every answer must be a 2xx with a JSON body, or a 4xx in the one error shape naming a
field. Images are generated (clip_service/testing/hostile_corpus.py, tests/image_seeds.py); no text
holds a ":", so nothing is a URL but the loopback and private ones in ``SAFE_URIS``, which
the server refuses unfetched. Routes that rank label tables (/interrogate, /analyze,
/extract_text) only get images the decoder refuses: a good one would start the label-table
build (minutes), which tests/test_served_corpus.py covers.

``FUZZ_EXAMPLES`` (default 60 per route, ~720 requests) and ``FUZZ_RANDOM=1`` as in
tests/test_fuzz_decode.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from clip_service.testing.hostile_corpus import (
    SAFE_URIS,
    Part,
    error_message,
    hostile_images,
    multipart,
    png,
)
from tests.image_seeds import seeds

pytestmark = pytest.mark.served

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
TIMEOUT = 60
LABEL_ROUTES = frozenset({"/interrogate", "/analyze", "/extract_text"})
ROUTES = [
    "/encode",
    "/rank",
    "/vectorize",
    "/caption",
    "/interrogate",
    "/analyze",
    "/extract_text",
    "/classify",
    "/tag",
    "/wearable",
    "/embeddings",
    "/v1/embeddings",
]
# The fields each route reads (form field names are drawn from these too).
FIELDS = {
    "/encode": [],
    "/rank": ["queries", "candidates"],
    "/vectorize": ["file", "image"],
    "/extract_text": ["file", "image"],
    "/caption": ["image"],
    "/interrogate": ["image", "mode", "caption", "min_flavors", "max_flavors"],
    "/analyze": ["image", "top_k"],
    "/classify": ["image", "labels", "label_set", "template", "top_k"],
    "/tag": ["file"],
    "/wearable": ["file"],
    "/embeddings": ["photo", "caption", "request_id", "texts_vectors"],
    "/v1/embeddings": ["input", "model", "encoding_format", "dimensions", "modality", "user"],
}

REFUSED_IMAGES = [data for data, _, _ in hostile_images().values()] + [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a" + bytes(20),
    b"\xff\xd8\xff" + bytes(100),
]
GOOD_IMAGES = [png(seed, (24 + seed, 30)) for seed in range(3)] + [
    data for (fmt, _), data in seeds().items() if fmt in {"JPEG", "GIF", "BMP", "WEBP", "TIFF"}
]

# Text without ":" (never a URL) and without surrogates (not encodable).
texts = st.one_of(
    st.text(st.characters(blacklist_characters=":", blacklist_categories=["Cs"]), max_size=40),
    st.sampled_from(
        ["", " ", "a photo of a {}", "{}", "{0}", "{:>99}", "\x00", "é" * 10, "a" * 4097]
    ),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.sampled_from([0, 1, -1, 128, 129])
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def images(route: str) -> st.SearchStrategy[bytes]:
    """Good or refused, half and half; only refused ones where label tables are ranked."""
    refused = st.sampled_from(REFUSED_IMAGES)
    return refused if route in LABEL_ROUTES else st.one_of(st.sampled_from(GOOD_IMAGES), refused)


def blobs(route: str) -> st.SearchStrategy[str]:
    """img_blob values: base64 (plain, wrapped, data URI) of images, or junk."""
    return st.one_of(
        images(route).map(lambda data: base64.b64encode(data).decode()),
        images(route).map(lambda data: base64.encodebytes(data).decode()),
        images(route).map(lambda data: "data:image/png;base64," + base64.b64encode(data).decode()),
        texts,
    )


def items(route: str) -> st.SearchStrategy[object]:
    return st.one_of(
        st.fixed_dictionaries({"text": texts}),
        st.fixed_dictionaries({"img_blob": blobs(route)}),
        st.fixed_dictionaries({"img_uri": st.sampled_from(SAFE_URIS)}),
        st.fixed_dictionaries(
            {}, optional={"text": texts, "img_blob": blobs(route), "x": json_values}
        ),
        json_values,
    )


def route_values(route: str) -> dict[str, st.SearchStrategy[object]]:
    """A plausible value for each of the route's JSON fields."""
    item = items(route)
    return {
        "queries": st.lists(item, max_size=3),
        "candidates": st.lists(item, max_size=3),
        "image": item,
        "mode": st.sampled_from(["best", "classic", "fast", "negative", "BEST", "", "x"]),
        "caption": texts,
        "min_flavors": numbers,
        "max_flavors": numbers,
        "top_k": numbers,
        "labels": st.lists(texts, max_size=4),
        "label_set": st.sampled_from(["pets", "wearables", "", "PETS", "x"]),
        "template": texts,
        "input": st.one_of(
            texts,
            st.lists(
                st.one_of(texts, blobs(route).map(lambda b: "data:image/png;base64," + b)),
                max_size=3,
            ),
        ),
        "model": texts,
        "encoding_format": st.sampled_from(["float", "base64", "", "x"]),
        "dimensions": numbers,
        "modality": st.sampled_from(["text", "image", "", "x"]),
        "user": texts,
    }


# Valid values (a mostly valid request reaches further in than a random one).
words = st.text(st.characters(categories=["L", "N", "Zs"]), min_size=1, max_size=30)


def valid_values(route: str) -> dict[str, st.SearchStrategy[object]]:
    image = images(route).map(lambda data: {"img_blob": base64.b64encode(data).decode()})
    item = st.one_of(image, words.map(lambda text: {"text": text}))
    return {
        "queries": st.lists(item, min_size=1, max_size=2),
        "candidates": st.lists(item, min_size=1, max_size=3),
        "image": image,
        "mode": st.sampled_from(["best", "classic", "fast", "negative"]),
        "caption": words,
        "min_flavors": st.integers(0, 4),
        "max_flavors": st.integers(1, 4),
        "top_k": st.integers(1, 5),
        "labels": st.lists(words, min_size=1, max_size=4),
        "template": st.sampled_from(["a photo of a {}", "{}", "{{}}{}", "{} {{x}}"]),
        "input": st.one_of(words, st.lists(words, min_size=1, max_size=3)),
        "encoding_format": st.sampled_from(["float", "base64"]),
    }


@st.composite
def json_bodies(draw: st.DrawFn, route: str) -> tuple[bytes, str]:
    values, valid = route_values(route), valid_values(route)
    if route == "/encode":
        item = st.one_of(valid["image"], words.map(lambda text: {"text": text}))
        body: object = draw(st.lists(item, min_size=1, max_size=4))
    else:
        fields = draw(st.lists(st.sampled_from(FIELDS[route] or ["x"]), unique=True))
        body = {name: draw(valid.get(name, values.get(name, json_values))) for name in fields}
    how = draw(st.sampled_from(["valid", "one field", "fuzzed", "random"]))
    if how == "one field" and isinstance(body, dict) and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
    elif how == "one field" and isinstance(body, list):
        body[draw(st.integers(0, len(body) - 1))] = draw(items(route))
    elif how == "fuzzed" and isinstance(body, dict):
        body |= {name: draw(values.get(name, json_values)) for name in body}
        if draw(st.booleans()):
            body[draw(texts)] = draw(json_values)
    elif how == "random":
        body = draw(json_values)
    text = json.dumps(body)
    mangle = draw(st.sampled_from(["none"] * 5 + ["truncate", "prefix", "latin-1"]))
    raw = text.encode()
    if mangle == "truncate":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif mangle == "prefix":
        raw = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff", b"NaN", b"[" * 30])) + raw
    elif mangle == "latin-1":
        raw = text.encode("latin-1", "replace")
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=latin-1",
                "text/plain",
                "application/x-json",
            ]
        )
    )
    return raw, content_type


names = st.one_of(
    st.sampled_from(
        [
            "file",
            "image",
            "photo",
            "labels",
            "queries",
            "candidates",
            "input",
            "template",
            "mode",
            "top_k",
        ]
    ),
    texts.filter(lambda t: '"' not in t and "\r" not in t and "\n" not in t),
    st.sampled_from([b"", b"\xff\xfe\x00", "x" * 300, "x" * 5000, 'a"b', "a; filename=x", "é"]),
)
filenames = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "a.png",
            "x" * 300 + ".png",
            "y" * 5000,
            "../../etc/passwd",
            "a/b/c",
            "\x00.png",
            b"\xff.png",
            "é.jpg",
            "C:\\x.png",
        ]
    ),
)


@st.composite
def multipart_bodies(draw: st.DrawFn, route: str) -> tuple[bytes, str]:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        value = draw(st.one_of(images(route), texts.map(str.encode)))
        content_type = draw(st.sampled_from([None, "image/png", "text/plain", "x/y; a=b"]))
        parts.append(Part(draw(names), value, draw(filenames), content_type))
    boundary = draw(st.sampled_from(["b", "hostile-boundary", "x" * 70, "-" * 60, "a b", "é"]))
    body, content_type = multipart(parts, boundary)
    mangle = draw(
        st.sampled_from(
            ["none", "none", "truncate", "lf", "preamble", "no-boundary", "other-boundary"]
        )
    )
    if mangle == "truncate":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif mangle == "lf":
        body = body.replace(b"\r\n", b"\n")
    elif mangle == "preamble":
        body = draw(st.binary(max_size=40)) + body
    elif mangle == "no-boundary":
        content_type = "multipart/form-data"
    elif mangle == "other-boundary":
        content_type = 'multipart/form-data; boundary="other"'
    return body, content_type


@st.composite
def raw_bodies(draw: st.DrawFn, route: str) -> tuple[bytes, str | None]:
    body = draw(st.one_of(images(route), st.binary(max_size=200)))
    urlencoded = draw(st.dictionaries(texts, texts, max_size=3))
    if draw(st.booleans()):
        body = "&".join(f"{k}={v}" for k, v in urlencoded.items()).encode()
    content_type = draw(
        st.sampled_from(
            [
                None,
                "application/octet-stream",
                "image/png",
                "application/x-www-form-urlencoded",
                "application/json",
                "multipart/form-data",
            ]
        )
    )
    return body, content_type


def bodies(route: str) -> st.SearchStrategy[tuple[bytes, str | None]]:
    return st.one_of(json_bodies(route), multipart_bodies(route), raw_bodies(route))


@pytest.fixture(scope="module")
def tally(request) -> Iterator[Counter]:
    counts: Counter = Counter()
    yield counts
    line = f"HTTP fuzz: {sum(counts.values())} requests, statuses {dict(sorted(counts.items()))}"
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    body = response.json()
    if response.status_code >= 400:
        message = error_message(body, response.request.url.path)
        assert message is not None, body
        field, separator, problem = message.partition(": ")
        assert field and separator and problem, body


@pytest.mark.parametrize("route", ROUTES)
def test_fuzzed_bodies_get_2xx_or_4xx(open_clip_url, tally, route):
    with httpx.Client(base_url=open_clip_url, timeout=TIMEOUT) as client:

        @given(case=bodies(route))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=not os.environ.get("FUZZ_RANDOM"),
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: tuple[bytes, str | None]) -> None:
            body, content_type = case
            headers = {"content-type": content_type.encode()} if content_type else {}
            response = client.post(route, content=body, headers=headers)
            tally[response.status_code] += 1
            check(response)

        run()
