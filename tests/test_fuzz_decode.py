"""Fuzz the image decoder: every format this Pillow opens, mutated seeds, in a worker process.

Seeds (``tests/image_seeds.py``): a valid file per format and variant, written by Pillow or
built from the plugin's own header code. Hypothesis mutates them: bytes and integers at
header offsets, the width and height fields (found by the seeds' distinctive 37 x 23),
truncation, insertion, deletion and splices. Each case runs in
``clip_service.testing.decode_worker``: ``decode_image`` and then both model libraries'
preprocessing (open_clip's and transformers', as the tiny models configure them), i.e. the
entry service's per-image work.

Allowed outcomes: an RGB image within the limits, or ``InvalidInput`` (400) /
``PayloadTooLarge`` (413). Never another exception, a crash or a hang (``CASE_TIMEOUT_S``),
and never a peak memory growth above ``BYTES_PER_PIXEL`` per pixel (of the header's size or
the decoded one, whichever is larger) plus ``SLACK_BYTES``.

The default run is 60 cases per seed (~4,900 cases, 25-70 s on 2 shared cores), with
a fixed seed, so CI sees the same cases; ``FUZZ_EXAMPLES=2000`` (per seed) and
``FUZZ_RANDOM=1`` make a longer, fresh run. The module prints the case count, the outcomes
and the largest peak growth per pixel seen for decoded images of 100,000 pixels or more.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_service.inputs.images import MAX_ASPECT_RATIO
from clip_service.testing.decode_worker import (
    DecodeWorker,
    blank_image,
    largest_images,
)
from clip_service.testing.decode_worker import (
    preprocess_configs as build_preprocess_configs,
)
from tests.image_seeds import SIZE, seeds

pytestmark = pytest.mark.slow  # ~4,900 cases: the full tier

MAX_PIXELS = 4_000_000  # small, so that a header at the limit costs little to test
CASE_TIMEOUT_S = 20.0  # generous on a shared 2-core machine; a decode here takes ms
# Peak RSS growth allowed per case (decode + both preprocessings). Measured on the largest
# accepted images (test_largest_accepted_images_stay_within_the_memory_bound): up to 24
# bytes per pixel (LA and transparent palette images, composited on white), and 27-42 MiB
# for the shapes at the aspect-ratio limit, whose shorter side preprocessing scales up to
# 224 px. The slack holds that and the first use of a code path (buffers, thread pools).
BYTES_PER_PIXEL = 32
SLACK_BYTES = 64 * 2**20
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
SEEDS = seeds()

INTERESTING = [
    0, 1, 2, 3, 4, 7, 8, 15, 16, 24, 32, 64, 127, 128, 255, 256, 1000, 2000, 4096, 32767,
    32768, 65535, 65536, 300_000, 2**24, 2**31 - 1, 2**31, 2**32 - 1,
]  # fmt: skip
DIMENSIONS = [0, 1, 2, 3, 100, 101, 1000, 2000, 2001, 4000, 65535, 300_000, 2**31 - 1, 2**32 - 1]


def _encodings(value: int) -> list[tuple[bytes, str]]:
    """How a header may store ``value``: (bytes, codec) with codec one of u8/le/be/ascii."""
    found = [(str(value).encode(), "ascii"), (value.to_bytes(1, "little"), "u8")]
    for size in (2, 4):
        found += [(value.to_bytes(size, "little"), "le"), (value.to_bytes(size, "big"), "be")]
    return found


def _dimension_fields(data: bytes) -> list[tuple[int, int, str]]:
    """(offset, length, codec) of every place in the first 1 KiB that may hold a side."""
    head = data[:1024]
    fields = []
    for side in set(SIZE) | {16}:
        for encoded, codec in _encodings(side):
            if codec == "u8" and len(fields) > 32:
                continue  # single bytes match everywhere; keep the wider encodings
            start = head.find(encoded)
            while start != -1:
                fields.append((start, len(encoded), codec))
                start = head.find(encoded, start + 1)
    return fields


def _encode(value: int, length: int, codec: str) -> bytes:
    if codec == "ascii":
        return str(value).encode()
    value %= 1 << (8 * length)
    return value.to_bytes(length, "big" if codec == "be" else "little")


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    fields = _dimension_fields(seed)
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        size = max(len(data), 1)
        # Half the positions in the header, where the fields that steer decoding live.
        position = draw(
            st.one_of(st.integers(0, min(size, 256) - 1), st.integers(0, size - 1)),
            label="position",
        )
        op = draw(st.sampled_from(["dimension", "int", "byte", "truncate", "insert", "delete"]))
        if op == "dimension" and fields:
            offset, length, codec = draw(st.sampled_from(fields), label="field")
            value = draw(st.sampled_from(DIMENSIONS), label="dimension")
            data[offset : offset + length] = _encode(value, length, codec)
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4]))
            order = draw(st.sampled_from(["little", "big"]))
            value = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            data[position : position + width] = value.to_bytes(width, order)
        elif op == "byte":
            data[position : position + 1] = bytes([draw(st.integers(0, 255))])
        elif op == "truncate":
            del data[position:]
        elif op == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.fixture(scope="module")
def preprocess_configs(tiny_models) -> list[dict]:
    """Both libraries' preprocessing, as the generated tiny models configure it."""
    return build_preprocess_configs(tiny_models)


@pytest.fixture(scope="module")
def worker(preprocess_configs) -> Iterator[DecodeWorker]:
    config = {
        "max_pixels": MAX_PIXELS,
        "preprocess": preprocess_configs,
        "warm_up": [data.hex() for data in SEEDS.values()]
        + [blank_image(mode, size).hex() for mode, size in LARGEST.values()],
    }
    decode_worker = DecodeWorker(config, timeout_s=CASE_TIMEOUT_S)
    decode_worker.start()
    yield decode_worker
    decode_worker.stop()


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    bytes_per_pixel: float = 0.0  # the largest, over decoded images of >= 100,000 pixels

    def add(self, result: dict) -> None:
        self.outcomes[result["outcome"]] += 1
        pixels = result["size"][0] * result["size"][1] if result["outcome"] == "ok" else 0
        if pixels >= 100_000:
            self.bytes_per_pixel = max(self.bytes_per_pixel, result["peak_growth_bytes"] / pixels)


@pytest.fixture(scope="module")
def tally(request) -> Iterator[Tally]:
    counts = Tally()
    yield counts
    line = (
        f"decoder fuzz: {sum(counts.outcomes.values())} cases, outcomes "
        f"{dict(counts.outcomes)}, peak growth <= {counts.bytes_per_pixel:.1f} bytes/pixel"
    )
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")


def check(result: dict) -> None:
    """The fuzz's property, for one worker result."""
    outcome = result["outcome"]
    assert outcome in ("ok", "400", "413"), result
    assert result["seconds"] < CASE_TIMEOUT_S, result
    if outcome == "ok":
        width, height = result["size"]
        assert result["mode"] == "RGB", result
        assert width * height <= MAX_PIXELS, result
        assert max(width, height) <= MAX_ASPECT_RATIO * min(width, height), result
    decoded = result["size"][0] * result["size"][1] if outcome == "ok" else 0
    pixels = max(result["declared_pixels"], decoded, 1)
    bound = BYTES_PER_PIXEL * pixels + SLACK_BYTES
    assert result["peak_growth_bytes"] <= bound, (pixels, result)


def test_every_format_pillow_opens_has_a_seed():
    """Plugins are enumerated at run time: a Pillow with another plugin fails here."""
    Image.init()
    opened = set()
    for data in SEEDS.values():
        with Image.open(io.BytesIO(data)) as image:
            opened.add(image.format.upper())
    assert set(Image.OPEN) <= opened, set(Image.OPEN) - opened


@pytest.mark.parametrize("key", list(SEEDS), ids=lambda key: "-".join(key))
def test_seed_decodes(worker, key):
    """The seeds themselves are valid for the check (stubs and Ghostscript-less EPS: 400)."""
    result = worker.run(SEEDS[key])
    check(result)


@pytest.mark.parametrize("key", list(SEEDS), ids=lambda key: "-".join(key))
def test_mutated_seed(worker, tally, key):
    @given(data=mutated(SEEDS[key]))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    def run(data: bytes) -> None:
        result = worker.run(data)
        tally.add(result)
        check(result)

    run()


# --- the memory bound, on the largest images the limits accept -----------------------


LARGEST = largest_images(MAX_PIXELS)


@pytest.mark.parametrize("name", list(LARGEST))
def test_largest_accepted_images_stay_within_the_memory_bound(worker, name):
    mode, size = LARGEST[name]
    result = worker.run(blank_image(mode, size))
    assert result["outcome"] == "ok", result
    check(result)
    growth = result["peak_growth_bytes"]
    print(f"{name}: peak growth {growth / 2**20:.1f} MiB, {growth / (size[0] * size[1]):.1f} B/px")
