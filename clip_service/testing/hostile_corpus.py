"""Hostile and good requests for every route, built here (nothing committed), for the
hostile-load soak (clip_service.testing.hostile_soak) and the served tests
(tests/test_served_hostile.py, tests/test_fuzz_http.py).

* :func:`bad_requests`: named requests that must be refused with a given 4xx whose error
  names a given field: the failures of issue 12's corpus (plugin errors on every image
  route, templates, long file names, malformed forms) and the neighbours the fuzz found.
* :func:`good_requests`: valid requests of every kind, each with a way to read its vectors
  from the answer, so an answer under load can be compared with the answer alone.

No request leaves loopback: every URL is an IP literal the server refuses unfetched.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

# URLs the server must refuse without a DNS lookup or a connection past loopback.
SAFE_URIS = (
    "http://127.0.0.1:9/x.png",
    "http://[::1]:9/x.png",
    "http://10.0.0.1/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0:9/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:9/",
)


# The Stable Diffusion web UI's routes, whose errors repeat the message as FastAPI's
# "detail" (clip_service.server.middleware.WEBUI_PREFIXES).
WEBUI_PREFIXES = ("/interrogator/", "/sdapi/")


def error_message(body: object, path: str) -> str | None:
    """The message of an error answer in the shape its route uses, else None: under /v1/
    OpenAI's ``{"error": {"message", "type", "param", "code"}}``, on the web UI's routes
    ``{"error": "<field>: <problem>", "detail": <the same>}``, elsewhere
    ``{"error": "<field>: <problem>"}``."""
    if not isinstance(body, dict):
        return None
    if path.startswith(WEBUI_PREFIXES):
        if set(body) != {"error", "detail"} or body["detail"] != body["error"]:
            return None
    elif set(body) != {"error"}:
        return None
    error = body["error"]
    if path.startswith("/v1/"):
        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
            return None
        error = error["message"]
    return error if isinstance(error, str) else None


@dataclass(frozen=True)
class Request:
    """One HTTP POST: ``status``, and ``names`` (a regex of the field its error names), are
    what a bad one must get."""

    name: str
    path: str
    body: bytes
    content_type: str | None = "application/json"
    status: int = 200
    names: str = ""
    vectors: Callable[[object], np.ndarray] | None = field(default=None, compare=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": self.content_type} if self.content_type else {}


# --- bodies -------------------------------------------------------------------------------


def png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class Part:
    """One multipart part; ``filename`` None makes it a text field. ``disposition``, when
    given, is the whole Content-Disposition value (for malformed ones)."""

    name: str | bytes
    value: bytes
    filename: str | bytes | None = None
    content_type: str | None = None
    disposition: bytes | None = None


def multipart(parts: Sequence[Part], boundary: str = "hostile-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body written byte by byte (names and file names as given,
    quotes and all), and its Content-Type."""

    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode()

    chunks = []
    for part in parts:
        disposition = part.disposition or b'form-data; name="' + raw(part.name) + b'"'
        if part.disposition is None and part.filename is not None:
            disposition += b'; filename="' + raw(part.filename) + b'"'
        head = b"Content-Disposition: " + disposition + b"\r\n"
        if part.content_type:
            head += b"Content-Type: " + part.content_type.encode() + b"\r\n"
        chunks.append(b"--" + boundary.encode() + b"\r\n" + head + b"\r\n" + part.value + b"\r\n")
    body = b"".join(chunks) + b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


def form_request(name: str, path: str, parts: Sequence[Part], **expect: object) -> Request:
    body, content_type = multipart(parts)
    return Request(name, path, body, content_type, **expect)  # type: ignore[arg-type]


# --- hostile images (the decoder's regression cases, see tests/test_images.py) ----------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    compressor = zlib.compressobj()
    row = b"\0" + b"\0" * 3 * width
    rows = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _corrupt_avif() -> bytes | None:
    if not features.check("avif"):
        return None
    data = _save(Image.new("RGB", (32, 32), (9, 80, 200)), "AVIF")
    payload = data.index(b"mdat") + 4
    return data[:payload] + bytes(len(data) - payload)


def _dds_unknown_flags() -> bytes:
    data = bytearray(_save(Image.new("RGB", (16, 16)), "DDS"))
    struct.pack_into("<I", data, 80, 0x4000)  # DDS_PIXELFORMAT.dwFlags
    return bytes(data)


def _icns_around(frame: bytes) -> bytes:
    """An ICNS whose one entry says 16x16 ("icp4") and holds ``frame``, of any size."""
    entry = b"icp4" + struct.pack(">I", 8 + len(frame)) + frame
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def hostile_images() -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, status, a regex of the problem)."""
    images = {
        "strip-300000x1": (black_png(300_000, 1), 400, "times the other"),
        "strip-1x300000": (black_png(1, 300_000), 400, "times the other"),
        "dds-unknown-pixel-format-flags": (_dds_unknown_flags(), 400, "pixel format"),
        "eps": (_save(Image.new("RGB", (16, 16)), "EPS"), 400, "EPS images are not accepted"),
        # A 16x16 icon holding a 7000x7000 PNG frame (49 Mpx, ~140 KB), read only at load.
        "icns-frame-over-the-pixel-limit": (_icns_around(black_png(7000, 7000)), 413, "exceeds"),
        "truncated-png": (png(3)[:200], 400, "truncated|not a readable"),
        "not-an-image": (b"%PDF-1.4 not an image" * 10, 400, "not a readable image"),
    }
    avif = _corrupt_avif()
    if avif is not None:
        images["avif-corrupt-payload"] = (avif, 400, "unreadable")
    return images


# --- bad requests ------------------------------------------------------------------------

# Routes taking an image, how to put one in, and the field their errors name.
IMAGE_ROUTES: dict[str, tuple[str, Callable[[str], object], str]] = {
    "/encode": ("json", lambda blob: [{"img_blob": blob}], r"(items|body)\[0\]\.img_blob"),
    "/rank": (
        "json",
        lambda blob: {"queries": [{"img_blob": blob}], "candidates": [{"text": "a cat"}]},
        r"queries\[0\]\.img_blob",
    ),
    "/classify": (
        "json",
        lambda blob: {"image": {"img_blob": blob}, "labels": ["a", "b"]},
        r"image\.img_blob",
    ),
    "/caption": ("json", lambda blob: {"image": {"img_blob": blob}}, r"image\.img_blob"),
    "/v1/embeddings": (
        "json",
        lambda blob: {"input": [f"data:image/png;base64,{blob}"]},
        r"input\[0\]\.img_blob",
    ),
    "/vectorize": ("raw", lambda blob: None, "body"),
    "/tag": ("file", lambda blob: None, "file"),
    "/wearable": ("file", lambda blob: None, "file"),
    "/embeddings": ("form", lambda blob: None, "photo"),
}

TEMPLATES = {
    "numbered-field": "{} {0}",
    "named-field": "{x}",
    "conversion": "{}{!r}",
    "format-spec": "{} {:>9}",
    "padding-behind-escaped-braces": "{0:>99999999}{{}}",
    "escaped-braces-only": "{{}}",
    "lone-brace": "a {} b }",
}


def image_request(name: str, path: str, data: bytes, **expect: object) -> Request:
    """``data`` sent to ``path`` the way that route takes an image."""
    kind, wrap, _ = IMAGE_ROUTES[path]
    if kind == "json":
        return Request(name, path, as_json(wrap(b64(data))), **expect)  # type: ignore[arg-type]
    if kind == "raw":
        return Request(name, path, data, "application/octet-stream", **expect)  # type: ignore[arg-type]
    part_name = "file" if kind == "file" else "photo"
    return form_request(name, path, [Part(part_name, data, "image.png", "image/png")], **expect)


def bad_requests() -> list[Request]:
    """Every request here must get exactly its ``status``, naming ``field``."""
    found = [
        image_request(f"{image}@{path}", path, data, status=status, names=IMAGE_ROUTES[path][2])
        for image, (data, status, _) in hostile_images().items()
        for path in IMAGE_ROUTES
    ]
    image = {"img_blob": b64(png(1))}
    found += [
        Request(
            f"template-{name}@/classify",
            "/classify",
            as_json({"image": image, "labels": ["cat", "dog"], "template": template}),
            status=400,
            names="template",
        )
        for name, template in TEMPLATES.items()
    ]
    picture = Part("file", png(2), "photo.png", "image/png")
    for path in ("/tag", "/wearable"):
        found += [
            form_request(
                f"text-in-the-file-field@{path}",
                path,
                [Part("file", b"hello")],
                status=400,
                names="file",
            ),
            form_request(
                f"no-file-field@{path}",
                path,
                [Part("image", png(2), "a.png")],
                status=400,
                names="file",
            ),
            form_request(f"two-files@{path}", path, [picture, picture], status=400, names="file"),
            form_request(
                f"file-name-of-5000@{path}",
                path,
                [Part("file", png(2), "a" * 5000 + ".png")],
                status=400,
                names="body",
            ),
            Request(
                f"urlencoded@{path}",
                path,
                b"file=http%3A%2F%2F127.0.0.1%3A9%2F",
                "application/x-www-form-urlencoded",
                status=400,
                names="file",
            ),
            Request(
                f"json@{path}", path, as_json({"file": "/etc/hostname"}), status=400, names="file"
            ),
        ]
    no_boundary = b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n"
    found += [
        Request(
            "no-boundary@/embeddings",
            "/embeddings",
            no_boundary,
            "multipart/form-data",
            status=400,
            names="body",
        ),
        Request(
            "garbage@/embeddings",
            "/embeddings",
            b"\x00\xff" * 64,
            "multipart/form-data; boundary=zz",
            status=400,
            names="body",
        ),
        form_request(
            "empty-field-name@/embeddings",
            "/embeddings",
            [Part("", b"a text")],
            status=400,
            names="body",
        ),
        form_request(
            "reserved-field-name@/embeddings",
            "/embeddings",
            [Part("request_id", b"a text")],
            status=400,
            names="request_id",
        ),
        form_request(
            "repeated-field@/embeddings",
            "/embeddings",
            [Part("a", b"one"), Part("a", b"two")],
            status=400,
            names="a",
        ),
        form_request(
            "file-name-of-5000@/embeddings",
            "/embeddings",
            [Part("photo", png(2), "a" * 5000)],
            status=400,
            names="body",
        ),
        form_request(
            "empty-text@/embeddings",
            "/embeddings",
            [Part("caption", b"")],
            status=400,
            names="caption",
        ),
        form_request(
            "text-instead-of-a-file@/vectorize",
            "/vectorize",
            [Part("image", b"not a file")],
            status=400,
            names="image",
        ),
        form_request(
            "two-files@/vectorize",
            "/vectorize",
            [picture, Part("second", png(3), "b.png")],
            status=400,
            names="second",
        ),
        form_request(
            "file-as-a-label@/classify",
            "/classify",
            [Part("image", png(2), "a.png"), Part("labels", b"x", "l.txt")],
            status=400,
            names="labels",
        ),
        form_request(
            "multipart@/v1/embeddings",
            "/v1/embeddings",
            [Part("input", b"a text")],
            status=415,
            names="body",
        ),
        Request(
            "urlencoded@/v1/embeddings",
            "/v1/embeddings",
            b"input=hello",
            "application/x-www-form-urlencoded",
            status=415,
            names="body",
        ),
        Request(
            "base64-with-junk@/encode",
            "/encode",
            as_json([{"img_blob": b64(png(2))[:40] + "#$%" + b64(png(2))[40:]}]),
            status=400,
            names=r"(items|body)\[0\]\.img_blob",
        ),
        # BentoML reads a body of any type but forms as JSON; these were 500s.
        Request(
            "not-json-as-text/plain@/encode",
            "/encode",
            b"\x89PNG not json",
            "text/plain",
            status=400,
            names="body",
        ),
        Request(
            "nested-too-deeply-as-text/plain@/rank",
            "/rank",
            b"[" * 100_000,
            "text/plain",
            status=400,
            names="body",
        ),
        Request(
            "private-url@/encode",
            "/encode",
            as_json([{"img_uri": SAFE_URIS[3]}]),
            status=400,
            names=r"(items|body)\[0\]\.img_uri",
        ),
    ]
    return found


# --- good requests -----------------------------------------------------------------------


def _rows(answer: object) -> np.ndarray:
    return np.asarray(answer, dtype=float)


def _vector(answer: dict) -> np.ndarray:
    return np.asarray(answer["vector"], dtype=float)


def _ranked(answer: dict) -> np.ndarray:
    return np.concatenate([_rows(answer["cosine_similarities"]), _rows(answer["probabilities"])])


def _scores(answer: dict) -> np.ndarray:
    scores = sorted(answer["scores"], key=lambda s: s["label"])
    return np.asarray([[s["cosine"], s["probability"]] for s in scores], dtype=float)


def _embedded(answer: dict) -> np.ndarray:
    return np.concatenate([_rows(answer["texts_vectors"]), _rows(answer["images_vectors"])])


def _openai(answer: dict) -> np.ndarray:
    return np.asarray([item["embedding"] for item in answer["data"]], dtype=float)


def good_requests(images: int = 4) -> list[Request]:
    """Valid requests of every kind; ``vectors`` reads what must not change under load."""
    found = []
    words = ("cat", "dog", "boat", "tree", "river", "city")
    for i in range(images):
        data = png(100 + i, (40 + 8 * i, 56 - 4 * i))
        blob = b64(data)
        wrapped = base64.encodebytes(data).decode()  # as `base64` writes it: 76 columns
        labels = [f"a {w}" for w in words[i:] + words[:i]][:4]
        picture = Part("photo", data, f"{i}.png", "image/png")
        found += [
            Request(
                f"encode-texts-{i}",
                "/encode",
                as_json([{"text": f"a photo of a {w}"} for w in labels]),
                vectors=_rows,
            ),
            Request(f"encode-image-{i}", "/encode", as_json([{"img_blob": blob}]), vectors=_rows),
            Request(
                f"encode-wrapped-base64-{i}",
                "/encode",
                as_json([{"img_blob": wrapped}]),
                vectors=_rows,
            ),
            Request(
                f"rank-{i}",
                "/rank",
                as_json(
                    {"queries": [{"img_blob": blob}], "candidates": [{"text": t} for t in labels]}
                ),
                vectors=_ranked,
            ),
            Request(
                f"classify-{i}",
                "/classify",
                as_json(
                    {
                        "image": {"img_blob": blob},
                        "labels": labels,
                        "template": "{{{}}} in a photo",
                        "top_k": 4,
                    }
                ),
                vectors=_scores,
            ),
            Request(f"vectorize-{i}", "/vectorize", data, "image/png", vectors=_vector),
            form_request(f"vectorize-form-{i}", "/vectorize", [picture], vectors=_vector),
            form_request(
                f"embeddings-form-{i}",
                "/embeddings",
                [Part("caption", labels[0].encode()), picture],
                vectors=_embedded,
            ),
            Request(
                f"openai-{i}",
                "/v1/embeddings",
                as_json({"input": [labels[1], f"data:image/png;base64,{wrapped}"]}),
                vectors=_openai,
            ),
            # A file name past the file system's 255 bytes: BentoML wrote it to disk (a 500).
            form_request(
                f"tag-long-file-name-{i}", "/tag", [Part("file", data, "x" * 300 + ".png")]
            ),
        ]
    return found


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two answers' vectors, flattened; 1.0 for two zero vectors."""
    a, b = a.ravel(), b.ravel()
    if a.shape != b.shape:
        return -1.0
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))
