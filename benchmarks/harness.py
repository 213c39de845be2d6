"""The harness every benchmark scenario runs on: its command line, servers, load, results.

A scenario is a short script that declares its own options on a :class:`Scenario`, measures
with what this module offers, and ends with :meth:`Scenario.write`: a markdown results file
under ``benchmarks/results/`` that starts with the environment record (date, machine,
versions, the exact command, the settings, each step's duration), so a figure is never
quoted without the conditions it was taken in.

* servers: :meth:`Scenario.serve` (``bentoml serve`` of this checkout or another's) and
  :meth:`Scenario.process` (any server command), each in its own process group, stopped
  with it and nothing else;
* load: :func:`load` and :func:`start_load` run ``benchmarks/loadgen.py`` in a process of
  its own (never the orchestrator's event loop, never the server's interpreter);
* in process: :func:`production_encoder` (the model ``bentoml serve`` loads, with the same
  settings) and :func:`model_loop` (its batched ceiling);
* results: :func:`table`, :func:`fmt`, :func:`times`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image, ImageFilter
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # scenarios run as scripts: `python benchmarks/NAME.py`
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = (
    "torch", "open-clip-torch", "transformers", "bentoml", "clip-interrogator", "pillow",
    "aiohttp", "flask",
)  # fmt: skip
TEXT = "a photo of a cat sitting on a wooden table next to a window"


@dataclass(frozen=True)
class Server:
    """A started server: its base URL and log file."""

    url: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response

    def model(self) -> dict[str, Any]:
        return self.get("/model").json()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the ``/metrics`` samples named ``name`` with these labels."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(self.get("/metrics").text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def wait_for_tables(self, timeout_s: float) -> dict[str, Any]:
        """Poll ``GET /model`` until the label tables are ready (interrogation is refused
        while they load or build, unless due within the request's budget)."""
        deadline = time.monotonic() + timeout_s
        while (tables := self.model()["interrogation"]["label_tables"])["state"] != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError(f"label tables not ready after {timeout_s:.0f} s: {tables}")
            time.sleep(0.5)
        return tables

    def built_tables(self) -> bool:
        """Whether it encoded label tables itself (its log says "built")."""
        lines = self.log.read_text(errors="replace").splitlines()
        return any("label table" in line and ": built " in line for line in lines)


class Scenario:
    """One benchmark run: its options, work directory, steps, notes and results file."""

    def __init__(
        self,
        name: str,
        doc: str,
        *,
        models: Path | None = Path("/work/bench-models"),
        serves: bool = True,
    ):
        """``serves``: the scenario starts servers (so takes ``--models``, ``--server-env``
        and ``--start-timeout``); an in-process one takes only its own options and ``--out``."""
        self.name = name
        self.parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
        self.parser.add_argument("--out", type=Path, help=f"default {RESULTS / name}.md")
        if serves:
            self.parser.add_argument("--models", type=Path, default=models, help="model folder")
            self.parser.add_argument(
                "--server-env", action="append", default=[], metavar="KEY=VAL", help="setting"
            )
            self.parser.add_argument("--start-timeout", type=float, default=900)
        self.arg = self.parser.add_argument
        self.notes: dict[str, str] = {}
        self.steps: dict[str, float] = {}
        self.work = Path()
        self.args = argparse.Namespace()

    def parse(self) -> argparse.Namespace:
        self.args = self.parser.parse_args()
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        return self.args

    def server_env(self) -> dict[str, str]:
        """The ``--server-env KEY=VAL`` settings."""
        pairs = [pair.partition("=") for pair in self.args.server_env]
        if bad := [key + sep + value for key, sep, value in pairs if not sep or not key]:
            raise SystemExit(f"--server-env expects KEY=VAL, got {bad}")
        return {key: value for key, _, value in pairs}

    def model_dir(self, name: str) -> Path:
        return (self.args.models / name).resolve()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step for the results' "step durations" line."""
        start = time.perf_counter()
        yield
        self.steps[name] = time.perf_counter() - start

    @contextlib.contextmanager
    def serve(
        self, name: str, settings: Mapping[str, str], *, cwd: Path = REPO, port: int = 0
    ) -> Iterator[Server]:
        """``bentoml serve`` of ``cwd`` (default this checkout) on ``port`` (default a free
        one), offline, with its own ``BENTOML_HOME``, once ``/readyz`` answers 200."""
        port = port or free_port()
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "--host",
            "127.0.0.1",
            f"--port={port}",
        ]
        env = {
            "BENTOML_HOME": str(self.work / f"bentoml-{name}"),
            "BENTOML_DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
            **settings,
        }
        with self.process(name, command, port, "/readyz", env, cwd) as server:
            yield server

    @contextlib.contextmanager
    def process(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        ready_path: str,
        env: Mapping[str, str],
        cwd: Path = REPO,
    ) -> Iterator[Server]:
        """Start ``command`` in its own process group, wait until ``ready_path`` answers
        200, and stop the group (SIGTERM, then SIGKILL): only what it started."""
        server = Server(f"http://127.0.0.1:{port}", self.work / f"{name}.log")
        started = time.perf_counter()
        with server.log.open("wb") as log:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                _wait_ready(process, server, ready_path, self.args.start_timeout)
                print(f"{name}: ready after {time.perf_counter() - started:.0f} s", flush=True)
                yield server
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)

    def write(self, title: str, lines: Mapping[str, str], *sections: str) -> Path:
        """Print and write the results: the environment record, ``lines``, the step
        durations and notes, then ``sections`` (tables)."""
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        load_average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        memory_gib = psutil.virtual_memory().total / 2**30
        record = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, "
            f"{platform.system()} {platform.release()}; load average at the end {load_average}",
            "command": f"`{command}` (in {REPO})",
            "versions": versions(),
            **lines,
        }
        if self.steps:
            record["step durations"] = ", ".join(f"{k} {v:.0f} s" for k, v in self.steps.items())
        body = "\n".join(f"- {key}: {value}" for key, value in {**record, **self.notes}.items())
        text = "\n".join([f"## {title}\n\n{body}\n", *sections])
        path = self.args.out or RESULTS / f"{self.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(text, f"written to {path}", sep="\n")
        return path


def _wait_ready(process: subprocess.Popen, server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{server.log.stem} exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{server.log.stem} not ready after {timeout_s:.0f} s; log: {server.log}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Load: benchmarks/loadgen.py in its own process.


def _load_command(url: str, body: Path, content_type: str, options: dict[str, object]) -> list:
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    loadgen = REPO / "benchmarks" / "loadgen.py"
    return [sys.executable, str(loadgen), url, str(body), "--content-type", content_type, *flags]


def load(url: str, body: Path, content_type: str, **options: object) -> dict[str, Any]:
    """The load generator's report for ``body`` sent to ``url``; ``options`` are its flags
    (``concurrency``, ``duration``, ``warmup``, ``requests``, ``wait_ready``)."""
    command = _load_command(url, body, content_type, options)
    return load_report(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def start_load(url: str, body: Path, content_type: str, **options: object) -> subprocess.Popen:
    """:func:`load` started in the background; read it with :func:`load_report`."""
    command = _load_command(url, body, content_type, options)
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def load_report(stdout: str) -> dict[str, Any]:
    """The JSON object the load generator prints last."""
    return json.loads(stdout.strip().splitlines()[-1])


# Payloads and models.


def make_jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-like JPEG (smooth shapes plus grain; ~20 KB)."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize(size, 3)
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(coarse.filter(ImageFilter.GaussianBlur(4)), float) + grain, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write(path: Path, data: bytes | str | object) -> Path:
    """``data`` (bytes, text, or anything else as JSON) written to ``path``: a request body."""
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def embedding_dim(model_dir: Path) -> int:
    if (model_dir / "open_clip_config.json").is_file():
        config = json.loads((model_dir / "open_clip_config.json").read_text())
        return config["model_cfg"]["embed_dim"]
    return json.loads((model_dir / "config.json").read_text())["projection_dim"]


def seed_label_cache(directory: Path, model_key: str, dim: int, *, seed: int = 0) -> Any:
    """Every label table in ``directory`` in the server's cache format, as seeded random unit
    vectors, so a server started on it loads instead of building (which would take the CPU
    for many minutes at full size and skew every timing); the tables."""
    from clip_service.interrogation.label_cache import LabelCache
    from clip_service.interrogation.labels import read_label_tables

    rng = np.random.default_rng(seed)

    async def encode(texts: Sequence[str]) -> np.ndarray:
        return rng.standard_normal((len(texts), dim), dtype=np.float32)

    cache = LabelCache(directory, model_key, encode, progress=False)
    return asyncio.run(cache.embed_all(read_label_tables()))


def production_encoder(settings: Mapping[str, str]) -> Any:
    """The CLIP model ``bentoml serve``'s ``ClipEncoder`` loads with the same settings, in
    this process: the in-process ceiling runs exactly the served model code."""
    from clip_service.models.factory import load_configured_clip_model
    from clip_service.settings import get_settings

    os.environ.update(settings)
    get_settings.cache_clear()
    return load_configured_clip_model(get_settings())


def rate(step: Callable[[], int], seconds: float) -> float:
    """Items per second of ``step`` (returns items done) over ~``seconds``, after a warm-up."""
    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


def model_loop(
    encoder: Any, jpeg: bytes, batch_sizes: Sequence[int], seconds: float
) -> tuple[list[tuple[str, str, str, float]], dict[str, float]]:
    """In-process batched loops on ``encoder``: rows (loop, kind, batch, items/s) and the best
    figure by workload: ``image`` (model only), ``image+decode``, ``text``."""
    from clip_service.inputs.images import decode_image
    from clip_service.models.preprocess import build_preprocessor

    preprocess = build_preprocessor(encoder.info().preprocess)
    pixels = preprocess(decode_image(jpeg, "body", max_pixels=10**8))
    rows, best = [], {}
    for kind, one in (("image", pixels), ("text", TEXT)):
        found = {}
        for b in batch_sizes:
            batch = np.stack([one] * b) if kind == "image" else [one] * b
            encode = encoder.encode_images if kind == "image" else encoder.encode_texts
            found[b] = rate(lambda encode=encode, batch=batch: len(encode(batch)), seconds)
            rows.append(("model loop", kind, f"batch {b}", found[b]))
            print(f"in process {kind} batch {b}: {found[b]:.1f}/s", flush=True)
        best[kind] = max(found.values())
        if kind == "image":
            b = max(found, key=found.__getitem__)

            def full(b: int = b) -> int:
                decoded = [decode_image(jpeg, "body", max_pixels=10**8) for _ in range(b)]
                return len(encoder.encode_images(np.stack([preprocess(im) for im in decoded])))

            best[kind + "+decode"] = rate(full, seconds)
            rows.append(
                ("decode+preprocess+model loop", kind, f"batch {b}", best[kind + "+decode"])
            )
    return rows, best


def best_of(call: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """The fastest of ``rounds`` timed calls after a warm-up: (seconds, its result)."""
    result, best = call(), float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def latency(call: Callable[[], object], n: int) -> dict[str, float]:
    """Latency percentiles (ms) of ``call()`` in process, after a warm-up."""
    for _ in range(5):
        call()
    ms = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        ms.append((time.perf_counter() - start) * 1000)
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


# Results.


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; None when either is missing or zero."""
    return a / b if a and b else None


def times(a: float | None, b: float | None = 1.0) -> str:
    """``a / b`` as ``1.23x``; ``n/a`` when either is missing or zero."""
    return "n/a" if (value := ratio(a, b)) is None else f"{value:.2f}x"


def versions(extra: Mapping[str, str] | None = None) -> str:
    found = [f"python {platform.python_version()}"]
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found + [f"{k} {v}" for k, v in (extra or {}).items()])


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
