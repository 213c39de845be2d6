"""Write docs/performance.md from the benchmark results in benchmarks/results/*.md.

The results files are the one copy of the measured figures: each benchmark script writes its
own, with the machine, versions, models, settings and the exact command. This script puts
them together, verbatim, behind a short introduction, so the documentation never holds a
second, hand-copied set of numbers. It only changes heading levels (each file becomes one
section) and adds, per file, the script that writes it and a note where the file records a
setting that the current code does not have, or a batching value that is not the current
default (read from clip_service/settings.py, without importing it). The page shows only
figures of the current code: a file committed before the last change to the code it measures
(the serving code, the lock, its script) is stale, and is listed with the commit it was
measured at, its figures left out, until its script is run again.

    python benchmarks/render_docs.py            # writes docs/performance.md
    python benchmarks/render_docs.py --check    # exit 1 if docs/performance.md is stale

Run it again after any benchmark writes a new results file; the output depends only on the
results files and settings.py, so an unchanged input gives an unchanged page.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SETTINGS = REPO / "clip_service" / "settings.py"
OUT = REPO / "docs" / "performance.md"
# What a benchmark measures besides its own script: a change here makes its results stale.
MEASURED_CODE = ("clip_service", "runners", "service.py", "uv.lock", "benchmarks/harness.py")


@dataclass(frozen=True)
class Source:
    """A results file this page knows: the script that writes it and what it measures."""

    name: str
    script: str
    about: str


# In reading order. Results files not listed here are appended after these, by name.
KNOWN = (
    Source(
        "profile_served.md",
        "benchmarks/profile_served.py",
        "Where the served path's CPU goes for one-text and one-image requests: CPU per "
        "request in the entry and the encoder (psutil), and py-spy's samples of each by layer "
        "(HTTP, middleware, validation, the hop, the scheduler, the model) and by function.",
    ),
    Source(
        "serving_throughput.md",
        "benchmarks/serving_throughput.py",
        "Throughput and latency at 1 to 64 closed-loop clients: this service (`/vectorize`, "
        "`/encode`) against the in-process model loop (the ceiling), a naive Flask server "
        "(one request, one forward pass) and infinity-emb 0.0.78, on the same weights.",
    ),
    Source(
        "caption_dir.md",
        "benchmarks/caption_dir.py",
        "`clip-service caption-dir` on a folder of images against the server's own "
        "captioning rate at the same concurrency (the load generator on the same images).",
    ),
    Source(
        "serving_core.md",
        "benchmarks/serving_core.py",
        "The scheduler under mixed work: a burst on a fresh server while its label tables "
        "build, one text beside background and interrogation work and after a burst, "
        "`/vectorize` at 32 clients against the in-process loop, and the memory of each "
        "service with and without interrogation.",
    ),
    Source(
        "interrogation_modes.md",
        "benchmarks/interrogation_modes.py",
        "Each interrogation mode served against clip-interrogator 0.6.0 in process, same "
        "models, same label tables, same bounded `max_flavors`; prompts compared as strings.",
    ),
    Source(
        "interrogation_goodput.md",
        "benchmarks/interrogation_goodput.py",
        "Many best-mode interrogations at once with a deadline that bites, this code against "
        "an earlier commit: answers in time per minute, refusals and how fast they come, "
        "504s, and the encoder's work after the last answer (work for nobody).",
    ),
    Source(
        "label_tables.md",
        "benchmarks/label_tables.py",
        "Building label-table embeddings (the first 4,096 flavors) here and with "
        "clip-interrogator 0.6.0's `LabelTable`, with the largest difference in value.",
    ),
    Source(
        "jpeg_decode.md",
        "benchmarks/jpeg_decode.py",
        "JPEG decoding and 224 px preprocessing, full decode against draft decoding "
        "(`JPEG_DRAFT`), with the pixel and embedding differences.",
    ),
    Source(
        "entry_workers.md",
        "benchmarks/entry_workers.py",
        "Served `/vectorize` throughput at 1 and 2 entry workers (`ENTRY_WORKERS`), "
        "alternating rounds on fresh servers, CLIP only.",
    ),
    Source(
        "image_memory.md",
        "benchmarks/image_memory.py",
        "Peak memory of decoding and preprocessing one image at the pixel and aspect-ratio "
        "limits, in a fresh process per image.",
    ),
    Source(
        "text_tower.md",
        "benchmarks/text_tower.py",
        "The text tower in process: 77-token padding against padding to the batch's longest "
        "text, and a chain step's shared prefix run once.",
    ),
    Source(
        "image_tower.md",
        "benchmarks/image_tower.py",
        "The image tower in process per precision and runtime (fp32, bf16, ONNX, int8): speed "
        "and embedding cosines against fp32 eager.",
    ),
    Source(
        "gpu_check.md",
        "benchmarks/gpu_check.sh",
        "On one GPU: CUDA parity (fp16 served against fp32 in process), prompts against "
        "clip-interrogator 0.6.0 on CUDA, served against in-process speed.",
    ),
)

HEADER = """\
<!-- Generated by benchmarks/render_docs.py from benchmarks/results/*.md: do not edit.
     Regenerate with: python benchmarks/render_docs.py -->

# Performance

This page is generated: every figure below is copied verbatim from the results files in
[`benchmarks/results/`](../benchmarks/results/), which the benchmark scripts write. To
update it, run a benchmark (see [development](development.md#benchmarks)), then
`python benchmarks/render_docs.py`.

## How we measure

The machines are small and shared: 2 CPU cores (Intel Xeon or AMD EPYC, as each file
records), 24 GiB, no GPU, other work running; so only figures taken side by side in one run
(one file) are compared, and the results are given as ratios next to the raw numbers. The
models are full-size architectures with random weights (ViT-B-32 in open_clip and
transformers format with the same weights, and BLIP-base, written by
`python -m clip_service.testing.full_size_models`): they cost what the real checkpoints
cost, but their embeddings, captions and prompts mean nothing. Load comes from another process
(`benchmarks/loadgen.py`, closed-loop aiohttp clients); each server is started, warmed up,
measured and stopped in turn. Every file records its date, machine, versions, models,
settings, the server's `GET /model` answer and the exact command. Nothing here was measured
on a GPU.
"""

FOOTER = """\
## Not in this page

The figures `benchmarks/text_tower.py` and `benchmarks/image_tower.py` printed before they
wrote results files are quoted, with the conditions they were taken in, in
[configuration](configuration.md#precision-and-runtime); a run of either now adds its
section here.
"""


def settings_defaults(path: Path = SETTINGS) -> dict[str, object]:
    """Field name -> default of the ``Settings`` class, for defaults written as literals
    (or ``Field(literal, ...)``, or arithmetic on literals); other fields map to None."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    defaults: dict[str, object] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field":
                value = value.args[0] if value.args else None
            defaults[node.target.id] = _literal(value)
    return defaults


def _literal(node: ast.expr | None) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = _literal(node.operand)
        return -operand if isinstance(operand, int | float) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, int | float) and isinstance(right, int | float):
            return left * right if isinstance(node.op, ast.Mult) else left + right
    return None


def notes(text: str, defaults: dict[str, object]) -> list[str]:
    """What in a results file differs from the current code: setting names it assigns that
    are not settings, and batching values of its recorded ``GET /model`` answers that are
    not the current defaults."""
    found = []
    assigned = sorted(set(re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)=", text)))
    unknown = [name for name in assigned if name.lower() not in defaults]
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        found.append(
            f"{names}: not a setting of the current code (clip_service/settings.py); "
            "these rows describe the code the file was measured with."
        )
    differing: dict[str, set[str]] = {}
    for answer in re.findall(r"GET /model[^`]*`(\{.*?\})`", text):
        try:
            batching = json.loads(answer).get("batching", {})
        except ValueError:
            continue
        for key, value in batching.items():
            default = defaults.get(key)
            if default is not None and value != default:
                differing.setdefault(key, set()).add(str(value))
    for key, values in sorted(differing.items()):
        recorded = " and ".join(sorted(values))
        found.append(
            f"recorded with `{key.upper()}` {recorded}; the current default is "
            f"{defaults[key]} ([configuration](configuration.md))."
        )
    return found


def staleness(path: Path, script: str | None, repo: Path = REPO) -> str | None:
    """A note when ``path`` was committed before the last change to the code it measures;
    None when it is current (or not committed yet: a fresh run, or outside the repository)."""
    if not path.resolve().is_relative_to(repo.resolve()):
        return None
    measured = _git(repo, "log", "-1", "--format=%h %cs", "--", str(path))
    if not measured:
        return None
    commit, day = measured.split()
    code = [*MEASURED_CODE, *([script] if script else [])]
    changed = _git(repo, "diff", "--name-only", commit, "HEAD", "--", *code)
    if not changed:
        return None
    what = f"`{script}`" if script else "its script"
    return (
        f"stale: measured at commit {commit} ({day}); the code it measures has changed since. "
        f"Run {what} again to refresh these figures."
    )


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def section(path: Path, source: Source | None, defaults: dict[str, object]) -> str:
    """One results file as a section: its first heading at level 2, the others at level 3,
    everything else verbatim."""
    lines = path.read_text(encoding="utf-8").strip("\n").splitlines()
    title, body = None, []
    for line in lines:
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading and title is None:
            title = heading.group(2).strip()
        elif heading:
            body.append(f"### {heading.group(2).strip()}")
        else:
            body.append(line)
    title = title or path.stem.replace("_", " ")
    try:
        relative = path.resolve().relative_to(REPO).as_posix()
    except ValueError:  # a results folder outside the repository
        relative = path.as_posix()
    intro = [f"## {title}", ""]
    if source is not None:
        intro.append(textwrap.fill(source.about, width=92))
        intro.append("")
        written = f"written by `{source.script}`"
    else:
        written = "not described by benchmarks/render_docs.py yet"
    intro.append(f"Source: [`{relative}`](../{relative}), {written}.")
    intro.append("")
    for note in notes("\n".join(lines), defaults):
        intro.append(
            textwrap.fill(f"Note: {note}", width=92, initial_indent="> ", subsequent_indent="> ")
        )
        intro.append("")
    while body and not body[0].strip():
        body.pop(0)
    return "\n".join(intro + body) + "\n"


def render(results: Path = RESULTS, repo: Path = REPO) -> str:
    defaults = settings_defaults()
    files = {path.name: path for path in sorted(results.glob("*.md"))}
    known = {source.name: source for source in KNOWN}
    ordered = [name for name in known if name in files]
    ordered += [name for name in files if name not in known]
    missing = [source for source in KNOWN if source.name not in files]
    stale = {}
    for name in ordered:
        source = known.get(name)
        if note := staleness(files[name], source.script if source else None, repo):
            stale[name] = note
    ordered = [name for name in ordered if name not in stale]

    parts = [HEADER]
    if files:
        index = ["## Results", ""]
        for name in ordered:
            index.append(f"- [`{name}`](#{_anchor(_title(files[name]))})")
        if missing:
            index.append("")
            index.append("Not run yet (no results file):")
            index.append("")
            index += [f"- `{source.script}` ({source.name})" for source in missing]
        if stale:
            index += [
                "",
                "Not run again since the code they measure changed (their figures,",
                "in `benchmarks/results/`, are left out of this page):",
                "",
            ]
            index += [f"- `{name}`: {note[len('stale: ') :]}" for name, note in stale.items()]
        parts.append("\n".join(index) + "\n")
    parts += [section(files[name], known.get(name), defaults) for name in ordered]
    parts.append(FOOTER)
    return "\n".join(parts)


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^#+\s+(.*)$", line)
        if heading:
            return heading.group(1).strip()
    return path.stem.replace("_", " ")


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = re.sub(r"[^\w\- ]", "", title.lower())
    return kept.replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--out", type=Path, default=OUT, help="page to write")
    parser.add_argument("--check", action="store_true", help="only check that --out is up to date")
    args = parser.parse_args(argv)
    page = render(args.results)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != page:
            print(f"{args.out} is stale: run python benchmarks/render_docs.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
