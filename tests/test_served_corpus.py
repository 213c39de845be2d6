"""A corpus of good and bad image inputs through every route that takes images, served.

Good inputs (every format Pillow writes here, odd modes, alpha, EXIF rotation, extreme
sizes) must give 200 on every route; bad ones (not images, truncated, a decompression-bomb
header, bad base64) must give a 4xx in the one error shape, naming the field, and the
server must keep serving. All inputs are generated here; nothing is committed.

The module uses the session server, whose label tables (which /interrogate, /analyze and
/extract_text need) are built by then; the lines its log gained while the corpus was sent are
checked for 5xx answers at the end.
"""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps, features

from clip_service.testing.hostile_corpus import hostile_images
from tests.conftest import b64, image_bytes, make_image

pytestmark = pytest.mark.served

TIMEOUT = 120
LABEL_TIMEOUT = 600  # /extract_text (best mode) and the label-table build


@dataclass(frozen=True)
class Server:
    url: str
    home: Path
    log_sizes: dict[Path, int]  # each log file's size when the module started

    def log(self) -> str:
        """What the server logged since the module started."""
        written = []
        for path in sorted(self.home.glob("serve-*.log")):
            with path.open("rb") as f:
                f.seek(self.log_sizes.get(path, 0))
                written.append(f.read().decode(errors="replace"))
        return "".join(written)


@pytest.fixture(scope="module")
def server(open_clip_server) -> Server:
    home = open_clip_server.home
    sizes = {path: path.stat().st_size for path in home.glob("serve-*.log")}
    return Server(open_clip_server.url, home, sizes)


@pytest.fixture(scope="module")
def embedding_size(server) -> int:
    return httpx.get(f"{server.url}/model", timeout=TIMEOUT).json()["embedding_size"]


@pytest.fixture(scope="module")
def label_tables(server) -> None:
    """The label tables ready before the routes that rank them (the session server has
    built them by now; this waits, and asks again, should they not be)."""
    body = {"image": {"img_blob": b64(image_bytes(make_image(1, (32, 32))))}, "top_k": 1}
    deadline = time.monotonic() + LABEL_TIMEOUT
    while True:  # a build past the server's request timeout goes on: ask again
        response = httpx.post(f"{server.url}/analyze", json=body, timeout=LABEL_TIMEOUT)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert response.status_code == 200, response.text


# --- the corpus ------------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return make_image(seed, size)


def _animated_gif() -> bytes:
    frames = [_noise(10 + i) for i in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _palette_png_with_transparency() -> bytes:
    image = _noise(11).quantize(16)
    return _save(image, "PNG", transparency=0)


def _gray16_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    return _save(image, "PNG")


def _with_alpha(mode: str) -> bytes:
    image = _noise(12).convert(mode)
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1)))
    image.putalpha(alpha)
    return _save(image, "PNG")


def _exif_rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(_noise(13, (40, 20)), "JPEG", exif=exif.tobytes(), quality=95)


def _j2k() -> bytes:
    if not features.check("jpg_2000"):
        pytest.skip("this Pillow cannot write JPEG 2000")
    return _save(_noise(14), "JPEG2000")


def _webp() -> bytes:
    if not features.check("webp"):
        pytest.skip("this Pillow cannot write WEBP")
    return _save(_noise(15), "WEBP")


GOOD: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: _save(_noise(1), "JPEG"),
    "png": lambda: _save(_noise(2), "PNG"),
    "bmp": lambda: _save(_noise(3), "BMP"),
    "gif-animated": _animated_gif,
    "tiff": lambda: _save(_noise(4), "TIFF"),
    "ppm": lambda: _save(_noise(5), "PPM"),
    "pgm": lambda: _save(_noise(6).convert("L"), "PPM"),
    "pbm": lambda: _save(_noise(7).convert("1"), "PPM"),
    "ico": lambda: _save(_noise(8), "ICO", sizes=[(32, 32)]),
    "webp": _webp,
    "tga": lambda: _save(_noise(9), "TGA"),
    "jpeg2000": _j2k,
    "cmyk-jpeg": lambda: _save(_noise(16).convert("CMYK"), "JPEG"),
    "palette-png-transparency": _palette_png_with_transparency,
    "gray16-png": _gray16_png,
    "la-png": lambda: _with_alpha("LA"),
    "rgba-png": lambda: _with_alpha("RGBA"),
    "exif-rotated-jpeg": _exif_rotated_jpeg,
    "1x1": lambda: _save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
    # The aspect-ratio limit (100:1) exactly, both ways.
    "wide-1000x10": lambda: _save(_noise(17, (1000, 10)), "PNG"),
    "tall-10x1000": lambda: _save(_noise(18, (10, 1000)), "PNG"),
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring width x height RGB pixels, and one compressed row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\0" + b"\0" * 3 * width)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", row)
        + _png_chunk(b"IEND", b"")
    )


def _zip() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("image.png", image_bytes(_noise(18)))
    return buffer.getvalue()


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="red"/></svg>'
)


@dataclass(frozen=True)
class Bad:
    data: bytes | None = None  # the bytes; for base64 routes, base64-encoded
    blob: str | None = None  # a literal img_blob string (base64 routes only)
    status: int = 400
    problem: str = ""  # a regex the problem (after "<field>: ") must match


BAD: dict[str, Bad] = {
    "empty": Bad(b"", problem=r"empty|at least 1 character"),
    "random-bytes": Bad(np.random.default_rng(0).bytes(2048), problem=r"not a readable image"),
    "truncated-jpeg": Bad(_save(_noise(19), "JPEG")[:600], problem=r"truncated|not a readable"),
    "truncated-png": Bad(_save(_noise(20), "PNG")[:900], problem=r"truncated|not a readable"),
    "text": Bad(b"just some text, not an image\n" * 4, problem=r"not a readable image"),
    "html": Bad(b"<!doctype html><html><body><img src=x></body></html>", problem=r"not a read"),
    "zip": Bad(_zip(), problem=r"not a readable image"),
    # Over Pillow's own bomb limit (2 x 89.5M pixels): refused when Pillow opens it.
    "png-bomb-30000x30000": Bad(_png_bomb(), status=413, problem=r"exceeds the limit"),
    # Under Pillow's limit, over MAX_IMAGE_PIXELS (40M): refused by the header check.
    "png-8000x8000": Bad(
        _png_bomb(8000, 8000), status=413, problem=r"^image of 64000000 pixels exceeds"
    ),
    "svg": Bad(SVG, problem=r"not a readable image"),
    # Every image the hostile corpus holds (clip_service/testing/hostile_corpus.py): plugin errors
    # (DDS, AVIF), the 300000x1 strip, a frame over the limit inside an ICNS, EPS, ...
    **{
        name: Bad(data, status=status, problem=problem)
        for name, (data, status, problem) in hostile_images().items()
    },
    "invalid-base64": Bad(blob="this is ~not~ base64!", problem=r"not valid base64"),
    "data-uri-bad-base64": Bad(
        blob="data:image/png;base64,iVBOR*w0K==x", problem=r"not valid base"
    ),
}

# --- the routes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    path: str
    kind: str  # "raw" body, "blob" (img_blob in JSON) or "form" (multipart file)
    field: str  # a regex for the field the error must name
    wrap: Callable[[str], object] | None = None  # img_blob -> JSON body
    form_field: str = "file"
    labels: bool = False  # needs the label tables
    check: Callable[[object, int], None] = lambda body, size: None


def _vector(body, size):
    assert len(body["vector"]) == size


def _encoded(body, size):
    assert len(body) == 1 and len(body[0]) == size


def _ranked(body, size):
    assert np.isclose(sum(body["probabilities"][0]), 1)
    assert len(body["cosine_similarities"][0]) == 2


def _interrogated(body, size):
    assert body["mode"] == "fast" and body["prompt"] and body["caption"]


def _analyzed(body, size):
    assert body.pop("label_tables") is None  # no custom tables asked for
    assert {len(v) for v in body.values()} == {3}


def _classified(body, size):
    assert sorted(s["label"] for s in body["scores"]) == ["a car", "a cat", "a dog"]


def _texted(body, size):
    assert isinstance(body["text"], str) and body["text"]


def _captioned(body, size):
    assert isinstance(body["caption"], str)


def _tagged(body, size):
    assert [t["group"] for t in body["tags"]] == ["type", "fur"]


def _worn(body, size):
    assert len(body["top_categories"]) == 3


def _embedded(body, size):
    assert len(body["photo"]) == size and body["images_vectors"] == [body["photo"]]


ROUTES = {
    "vectorize": Route("/vectorize", "raw", r"body", check=_vector),
    "extract_text": Route("/extract_text", "raw", r"body", labels=True, check=_texted),
    "encode": Route(
        "/encode",
        "blob",
        r"(items|body)\[0\]\.img_blob",
        wrap=lambda blob: [{"img_blob": blob}],
        check=_encoded,
    ),
    "rank": Route(
        "/rank",
        "blob",
        r"queries\[0\]\.img_blob",
        wrap=lambda blob: {
            "queries": [{"img_blob": blob}],
            "candidates": [{"text": "a cat"}, {"text": "a dog"}],
        },
        check=_ranked,
    ),
    "caption": Route(
        "/caption",
        "blob",
        r"image\.img_blob",
        wrap=lambda blob: {"image": {"img_blob": blob}},
        check=_captioned,
    ),
    "interrogate": Route(
        "/interrogate",
        "blob",
        r"image\.img_blob",
        wrap=lambda blob: {"image": {"img_blob": blob}, "mode": "fast"},
        labels=True,
        check=_interrogated,
    ),
    "analyze": Route(
        "/analyze",
        "blob",
        r"image\.img_blob",
        wrap=lambda blob: {"image": {"img_blob": blob}, "top_k": 3},
        labels=True,
        check=_analyzed,
    ),
    "classify": Route(
        "/classify",
        "blob",
        r"image\.img_blob",
        wrap=lambda blob: {"image": {"img_blob": blob}, "labels": ["a cat", "a dog", "a car"]},
        check=_classified,
    ),
    "tag": Route("/tag", "form", r"file", check=_tagged),
    "wearable": Route("/wearable", "form", r"file", check=_worn),
    "embeddings": Route("/embeddings", "form", r"photo", form_field="photo", check=_embedded),
}


def send(
    url: str, route: Route, data: bytes | None = None, blob: str | None = None
) -> httpx.Response:
    timeout = LABEL_TIMEOUT if route.labels else TIMEOUT
    if route.kind == "raw":
        return httpx.post(f"{url}{route.path}", content=data, timeout=timeout)
    if route.kind == "form":
        files = {route.form_field: ("image", data, "application/octet-stream")}
        return httpx.post(f"{url}{route.path}", files=files, timeout=timeout)
    body = route.wrap(b64(data) if blob is None else blob)
    return httpx.post(f"{url}{route.path}", json=body, timeout=timeout)


def _ready(request, route: Route) -> None:
    if route.labels:
        request.getfixturevalue("label_tables")


# --- good inputs: 200 everywhere --------------------------------------------------------

# /extract_text runs best mode (seconds per image here): one good image is enough.
GOOD_CASES = [
    (route, image)
    for route in ROUTES
    for image in GOOD
    if route != "extract_text" or image == "png"
]


@pytest.mark.parametrize(("route", "image"), GOOD_CASES)
def test_good_image_is_accepted(server, embedding_size, request, route, image):
    data = GOOD[image]()
    _ready(request, ROUTES[route])
    response = send(server.url, ROUTES[route], data)
    assert response.status_code == 200, response.text
    ROUTES[route].check(response.json(), embedding_size)


# --- bad inputs: a 4xx naming the field, never a 5xx -------------------------------------

# /extract_text gets a few of them; base64 problems only exist where images are base64.
BAD_CASES = [
    (route, name)
    for route in ROUTES
    for name, bad in BAD.items()
    if (bad.blob is None or ROUTES[route].kind == "blob")
    and (route != "extract_text" or name in {"empty", "random-bytes", "truncated-png", "svg"})
]


@pytest.mark.parametrize(("route", "name"), BAD_CASES)
def test_bad_input_is_refused_with_the_error_shape(server, route, name):
    bad, spec = BAD[name], ROUTES[route]
    started = time.monotonic()
    response = send(server.url, spec, bad.data, bad.blob)
    elapsed = time.monotonic() - started
    assert response.status_code == bad.status, response.text
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    field, _, problem = body["error"].partition(": ")
    assert re.fullmatch(spec.field, field), body
    assert re.search(bad.problem, problem), body
    if bad.status == 413:
        assert elapsed < 10, f"a bomb header took {elapsed:.1f} s: was it decoded?"


# --- decoding details, checked through vectors -----------------------------------------


def _vectorize(url: str, data: bytes) -> np.ndarray:
    response = httpx.post(f"{url}/vectorize", content=data, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return np.array(response.json()["vector"])


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "cmyk-jpeg": "image/jpeg"}
MIME["gif-animated"] = "image/gif"


@pytest.mark.parametrize("image", list(MIME))
def test_vectorize_and_encode_agree(server, image):
    data = GOOD[image]()
    vector = _vectorize(server.url, data)
    response = httpx.post(f"{server.url}/encode", json=[{"img_blob": b64(data)}], timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert _same(vector, np.array(response.json()[0]))
    as_uri = [{"img_blob": f"data:{MIME[image]};base64,{b64(data)}"}]
    response = httpx.post(f"{server.url}/encode", json=as_uri, timeout=TIMEOUT)
    assert _same(vector, np.array(response.json()[0]))


def _png_of(image: Image.Image) -> bytes:
    return image_bytes(image.convert("RGB"), "PNG")


def test_exif_orientation_is_applied(server):
    data = _exif_rotated_jpeg()
    stored = Image.open(io.BytesIO(data))
    upright = ImageOps.exif_transpose(stored)
    assert upright.size == (20, 40)
    vector = _vectorize(server.url, data)
    assert _same(vector, _vectorize(server.url, _png_of(upright)))
    assert not _same(vector, _vectorize(server.url, _png_of(stored)))


def test_animated_gif_gives_its_first_frame(server):
    data = _animated_gif()
    frames = Image.open(io.BytesIO(data))
    first = _png_of(frames)
    frames.seek(1)
    second = _png_of(frames)
    vector = _vectorize(server.url, data)
    assert _same(vector, _vectorize(server.url, first))
    assert not _same(vector, _vectorize(server.url, second))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_composited_on_white(server, mode):
    white = _vectorize(server.url, _save(Image.new("RGB", (48, 48), "white"), "PNG"))
    if mode == "P":
        image = _noise(21, (48, 48)).quantize(1)  # one colour, index 0, made transparent
        data = _save(image, "PNG", transparency=0)
    else:
        image = _noise(21, (48, 48)).convert(mode[:-1])
        image.putalpha(0)
        data = _save(image, "PNG")
    assert _same(_vectorize(server.url, data), white)


def test_gray16_png_equals_its_8_bit_version(server):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    sixteen = _save(Image.fromarray(ramp), "PNG")
    eight = _save(Image.fromarray(np.rint(ramp / 257).astype(np.uint8)), "PNG")
    assert _same(_vectorize(server.url, sixteen), _vectorize(server.url, eight))


# --- and the server is still there ------------------------------------------------------


# Not /extract_text (best mode, seconds): its good image was served before the bad ones.
@pytest.mark.parametrize("route", [route for route in ROUTES if route != "extract_text"])
def test_server_keeps_serving_after_the_corpus(server, embedding_size, request, route):
    _ready(request, ROUTES[route])
    response = send(server.url, ROUTES[route], GOOD["png"]())
    assert response.status_code == 200, response.text
    ROUTES[route].check(response.json(), embedding_size)


def test_no_server_error_was_logged(server):
    errors = re.findall(r"^.*\(status=5\d\d\b.*$", server.log(), re.MULTILINE)
    assert not errors, "\n".join(errors[:10])
