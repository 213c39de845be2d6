"""What the benchmark scripts share: the results header, server processes, label caches.

Every script prints a markdown results table and writes it under ``benchmarks/results/``
with the machine, versions, models, settings and the exact command, so a figure is never
quoted without the conditions it was taken in.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clip_service.interrogation.label_cache import LabelCache, LabelTables
from clip_service.interrogation.labels import read_label_tables
from clip_service.models.clip import ClipModel
from clip_service.models.factory import load_configured_clip_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = (
    "torch",
    "open-clip-torch",
    "transformers",
    "bentoml",
    "clip-interrogator",
    "pillow",
    "aiohttp",
    "flask",
)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VAL`` arguments (``--server-env``) as a dict."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server-env expects KEY=VAL, got {pair!r}")
        env[key] = value
    return env


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def versions(extra: Mapping[str, str] | None = None) -> str:
    found = []
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    found += [f"{k} {v}" for k, v in (extra or {}).items()]
    return ", ".join([f"python {platform.python_version()}", *found])


def header(title: str, lines: Mapping[str, str]) -> str:
    """The markdown preamble: title, date, machine, versions, command, then ``lines``."""
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    base = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {memory_gib():.0f} GiB, "
        f"{platform.system()} {platform.release()}; load average at the end {load}",
        "command": f"`{command}` (in {REPO})",
    }
    body = "\n".join(f"- {key}: {value}" for key, value in {**base, **lines}.items())
    return f"## {title}\n\n{body}\n"


def write_results(name: str, text: str, out: Path | None) -> Path:
    """Print ``text`` and write it to ``out`` (default ``benchmarks/results/{name}.md``)."""
    path = out or RESULTS / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {path}")
    return path


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@contextmanager
def server_process(
    name: str,
    command: Sequence[str],
    ready_url: str,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
    cwd: Path = REPO,
) -> Iterator[Path]:
    """Start ``command`` in its own process group, wait until ``ready_url`` answers 200,
    yield its log file, and stop the group (SIGTERM, then SIGKILL): only what it started.
    ``cwd``: the checkout to run it in (another commit's, for a before/after run)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(name, process, ready_url, timeout_s, log_path)
            print(f"{name}: ready after {time.perf_counter() - started:.0f} s", flush=True)
            yield log_path
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _wait_ready(
    name: str, process: subprocess.Popen, url: str, timeout_s: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s; log: {log}")


def loadgen_command(url: str, body: Path, content_type: str, *options: str) -> list[str]:
    """``benchmarks/loadgen.py`` sending ``body`` to ``url``; ``options`` are its flags."""
    loadgen = REPO / "benchmarks" / "loadgen.py"
    return [sys.executable, str(loadgen), url, str(body), "--content-type", content_type, *options]


def run_loadgen(url: str, body: Path, content_type: str, *options: str) -> dict[str, Any]:
    """Run the load generator in its own process (never this one's event loop); its report."""
    command = loadgen_command(url, body, content_type, *options)
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return loadgen_report(out.stdout)


def loadgen_report(stdout: str) -> dict[str, Any]:
    """The JSON object the load generator prints last."""
    return json.loads(stdout.strip().splitlines()[-1])


def bentoml_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)]


def bentoml_env(home: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """Environment for ``bentoml serve`` of the repository: offline, private BENTOML_HOME."""
    return {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        **settings,
    }


def seed_label_cache(directory: Path, model_key: str, dim: int, *, seed: int = 0) -> LabelTables:
    """Write every label table into ``directory`` in the server's cache format, holding
    seeded random unit vectors, so a server started on it loads instead of building
    (which would take the CPU for many minutes at full size and skew every timing)."""
    rng = np.random.default_rng(seed)

    async def encode(texts: Sequence[str]) -> np.ndarray:
        return rng.standard_normal((len(texts), dim), dtype=np.float32)

    cache = LabelCache(directory, model_key, encode, progress=False)
    return asyncio.run(cache.embed_all(read_label_tables()))


def tables_built_in_log(log: Path) -> bool:
    """Whether a served run encoded label tables itself (its log says "built")."""
    return any(
        "label table" in line and ": built " in line
        for line in log.read_text(errors="replace").splitlines()
    )


def wait_for_tables(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``GET /model`` until the server's label tables are ready; their status.

    Interrogation is refused (503) while they are loading or building, unless they are due
    within the request's budget, so a benchmark waits for them before timing it."""
    deadline = time.monotonic() + timeout_s
    while True:
        tables = httpx.get(f"{url}/model", timeout=30).json()["interrogation"]["label_tables"]
        if tables["state"] == "ready":
            return tables
        if time.monotonic() > deadline:
            raise RuntimeError(f"label tables not ready after {timeout_s:.0f} s: {tables}")
        time.sleep(0.5)


def model_answer(url: str) -> str:
    """The server's ``GET /model`` answer, as compact JSON, for the results header."""
    response = httpx.get(f"{url}/model", timeout=30)
    return response.text.strip() if response.status_code == 200 else f"HTTP {response.status_code}"


def production_encoder(settings: Mapping[str, str]) -> ClipModel:
    """The CLIP model ``bentoml serve``'s ``ClipEncoder`` loads with the same settings
    (``load_configured_clip_model``), in this process: the in-process ceiling runs exactly
    the served model code, whatever runtime or precision settings the server has."""
    os.environ.update(settings)
    from clip_service.settings import get_settings

    get_settings.cache_clear()
    return load_configured_clip_model(get_settings())
