"""The entry service's per-image work on untrusted bytes, in a process of its own: a hang
or a crash cannot take the caller down, and the process's peak memory (VmHWM, reset before
each input) is what one input cost. Used by the decoder fuzz (tests/test_fuzz_decode.py)
and by benchmarks/image_memory.py, with the images at the limits made here.

The parent (:class:`DecodeWorker`) sends length-prefixed inputs on stdin; for each, the
worker runs :func:`clip_service.inputs.images.decode_image` and then every given model
preprocessing, and answers one JSON line: the outcome, the error, the sizes seen and the
peak memory growth. The first frame is the configuration, JSON: ``max_pixels``,
``preprocess`` (PreprocessConfig dumps) and ``warm_up`` (hex inputs decoded once before
answering ``ready``, so that each codec's first use is not measured).
"""

from __future__ import annotations

import ctypes
import io
import json
import re
import select
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from clip_service.inputs.images import MAX_ASPECT_RATIO

_HEADER = struct.Struct("<I")


_LIBC = ctypes.CDLL("libc.so.6")


def _memory_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _reset_peak() -> None:
    """Hand freed heap pages back (glibc keeps them, and a case reusing them would look
    free), then reset VmHWM to the current RSS (Linux: 5 to clear_refs)."""
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _declared_pixels(data: bytes) -> int:
    """Width x height from the header, 0 when Pillow cannot identify it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width * image.height
    except Exception:  # only the size is wanted; unreadable headers have none
        return 0


def run_case(data: bytes, max_pixels: int, preprocessors: list[Any]) -> dict[str, Any]:
    from clip_service.errors import InvalidInput, PayloadTooLarge
    from clip_service.inputs.images import decode_image

    result: dict[str, Any] = {"declared_pixels": _declared_pixels(data)}
    _reset_peak()
    baseline = _memory_kib("VmRSS")
    started = time.perf_counter()
    try:
        image = decode_image(data, "f", max_pixels=max_pixels)
        result.update(outcome="ok", mode=image.mode, size=list(image.size))
        for preprocess in preprocessors:
            shape = preprocess(image).shape
            result.setdefault("pixels_shapes", []).append(list(shape))
        del image
    except PayloadTooLarge as exc:
        result.update(outcome="413", error=str(exc))
    except InvalidInput as exc:
        result.update(outcome="400", error=str(exc))
    except BaseException as exc:  # the fuzz reports whatever else escapes
        result.update(
            outcome=type(exc).__name__, error=str(exc)[:500], traceback=traceback.format_exc()
        )
    result["seconds"] = time.perf_counter() - started
    result["peak_growth_bytes"] = max(0, _memory_kib("VmHWM") - baseline) * 1024
    return result


def _frame(data: bytes) -> bytes:
    return _HEADER.pack(len(data)) + data


def _read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(_HEADER.size)
    return stream.read(_HEADER.unpack(header)[0]) if header else None


def main() -> None:
    from clip_service.models.preprocess import PreprocessConfig, build_preprocessor

    stdin, stdout = sys.stdin.buffer, sys.stdout
    config = json.loads(_read_frame(stdin))
    preprocessors = [build_preprocessor(PreprocessConfig(**c)) for c in config["preprocess"]]
    for blob in config.get("warm_up", []):  # load each codec once, outside the measurements
        run_case(bytes.fromhex(blob), config["max_pixels"], preprocessors)
    stdout.write("ready\n")
    stdout.flush()
    while (data := _read_frame(stdin)) is not None:
        stdout.write(json.dumps(run_case(data, config["max_pixels"], preprocessors)) + "\n")
        stdout.flush()


class DecodeWorker:
    """The parent's side: one worker process, restarted after a hang or a crash."""

    def __init__(self, config: dict[str, Any], timeout_s: float, start_timeout_s: float = 180):
        self.config, self.timeout_s, self.start_timeout_s = config, timeout_s, start_timeout_s
        self.process: subprocess.Popen | None = None
        self.cases = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clip_service.testing.decode_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdin is not None
        self.process.stdin.write(_frame(json.dumps(self.config).encode()))
        self.process.stdin.flush()
        line = self._read_line(self.start_timeout_s)
        if line != b"ready\n":
            self.stop()
            raise RuntimeError(f"decode worker did not start: {line!r}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def run(self, data: bytes) -> dict[str, Any]:
        """One case's result; a hang is ``outcome: timeout``, a dead worker ``crash``."""
        if self.process is None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        self.cases += 1
        try:
            self.process.stdin.write(_frame(data))
            self.process.stdin.flush()
            line = self._read_line(self.timeout_s)
        except BrokenPipeError:
            line = b""
        if line is None:
            self.stop()
            return {"outcome": "timeout", "seconds": self.timeout_s}
        if not line:
            code = self.process.poll()
            self.stop()
            return {"outcome": "crash", "returncode": code}
        return json.loads(line)

    def _read_line(self, timeout_s: float) -> bytes | None:
        """A line from the worker, b"" at EOF, None after ``timeout_s``."""
        assert self.process is not None and self.process.stdout is not None
        stream: BinaryIO = self.process.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([stream], [], [], timeout_s)
        return stream.readline() if ready else None


def blank_image(mode: str, size: tuple[int, int]) -> bytes:
    """A blank image of ``mode`` in a format that stores it (F: TIFF, CMYK: JPEG)."""
    buffer = io.BytesIO()
    image = Image.new(mode, size)
    if mode == "F":
        image.save(buffer, "TIFF", compression="tiff_adobe_deflate")
    elif mode == "CMYK":
        image.save(buffer, "JPEG")
    else:
        image.save(buffer, "PNG", **({"transparency": 0} if mode == "P" else {}))
    return buffer.getvalue()


def largest_images(max_pixels: int) -> dict[str, tuple[str, tuple[int, int]]]:
    """The largest images the limits take, by name: a square at ``max_pixels`` in every
    mode family, the aspect-ratio limit with as many pixels as allowed, and 1-pixel strips."""
    side = int(max_pixels**0.5)
    short = int((max_pixels / MAX_ASPECT_RATIO) ** 0.5)
    found = {f"{mode} {side}x{side}": (mode, (side, side)) for mode in
             ("RGB", "RGBA", "LA", "P", "I;16", "F", "CMYK")}  # fmt: skip
    long = short * MAX_ASPECT_RATIO
    found[f"RGBA {long}x{short}"] = ("RGBA", (long, short))
    found[f"RGB {MAX_ASPECT_RATIO}x1"] = ("RGB", (MAX_ASPECT_RATIO, 1))
    found[f"RGB 1x{MAX_ASPECT_RATIO}"] = ("RGB", (1, MAX_ASPECT_RATIO))
    return found


def preprocess_configs(models: dict[str, Path]) -> list[dict]:
    """Both CLIP formats' preprocessing, as the generated tiny ``models`` configure it."""
    from clip_service.models.factory import load_clip_model  # torch: not in the worker
    from clip_service.models.specs import parse_clip_spec

    specs = [f"local-dir:{models['open-clip']}", str(models["hf-clip"])]
    return [
        load_clip_model(
            parse_clip_spec(spec), "cpu", image_runtime="torch"
        ).preprocess_config.model_dump(mode="json")
        for spec in specs
    ]


if __name__ == "__main__":
    main()
