"""The ``clip-service`` command: serve, build a Bento, list models, warm caches, bulk-encode.

Settings are the server's (environment variables, :mod:`clip_service.settings`); options
override them. Every expected failure (bad model spec, missing folder, unreachable server)
ends with one ``Error: ...`` line and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
from pydantic import ValidationError

from clip_service.cli.bulk_encode import BulkEncodeError
from clip_service.cli.caption_dir import Summary
from clip_service.cli.caption_targets import CAPTION, MODES
from clip_service.interrogation.hub_tables import published_tables
from clip_service.interrogation.label_cache import LabelCache
from clip_service.interrogation.labels import read_label_tables
from clip_service.models.caption_families import CAPTION_ALIASES
from clip_service.models.captioning import resolve_caption_model
from clip_service.models.clip import ClipModel, ModelUnavailableError
from clip_service.models.factory import load_configured_clip_model
from clip_service.models.specs import ModelSpecError, parse_clip_spec
from clip_service.settings import Settings

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_CLIP = Settings.model_fields["clip_model"].default
DEFAULT_CAPTION = Settings.model_fields["caption_model"].default
# Repositories people commonly name; open_clip's own tags come from open_clip itself.
COMMON_HF_MODELS = (
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-large-patch14",
    "openai/clip-vit-large-patch14-336",
    "hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "hf-hub:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
)
PRESETS = (
    ("CPU default", "ViT-B-32:openai", "blip-base"),
    ("clip-interrogator quality", "ViT-L-14/openai", "blip-large"),
    ("clip-interrogator SD 2.x", "ViT-H-14/laion2b_s32b_b79k", "blip-large"),
)

model_option = click.option(
    "--model-name", envvar="CLIP_MODEL", default=DEFAULT_CLIP, show_default=True,
    help="CLIP model spec: ARCH:tag, org/repo, hf-hub:org/repo, local-dir:PATH or a directory.",
)  # fmt: skip
caption_option = click.option(
    "--caption-model", envvar="CAPTION_MODEL", default=DEFAULT_CAPTION, show_default=True,
    help="Caption model: blip-base, blip-large, an HF repo id or a save_pretrained directory.",
)  # fmt: skip
cache_option = click.option(
    "--label-cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where label-table embeddings live (default: LABEL_CACHE_DIR).",
)  # fmt: skip


def one_line_errors(command: _F) -> _F:
    """Expected failures become click's one-line ``Error:`` and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ModelSpecError, ModelUnavailableError, BulkEncodeError) as exc:
            raise click.ClickException(str(exc)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            raise click.ClickException(f"setting {first['loc'][0]}: {first['msg']}") from None

    return wrapper  # type: ignore[return-value]


def settings_with(**overrides: Any) -> Settings:
    """The server's settings from the environment, with the given options on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def warm_label_cache(model: ClipModel, directory: Path, download: bool) -> LabelCache:
    """Load, fetch or build every label table into ``directory``, keyed as the server keys
    them (by the model spec string the server is given), so it finds them valid and reuses
    them; ``download`` is the server's LABEL_TABLES_DOWNLOAD (published tables first)."""

    async def encode(texts: Sequence[str]) -> np.ndarray:
        return model.encode_texts(texts)

    spec = model.info().spec
    fetch = published_tables(spec) if download else None
    cache = LabelCache(directory, spec, encode, fetch=fetch)
    asyncio.run(cache.embed_all(read_label_tables()))
    return cache


def check_specs(model_name: str, caption_model: str) -> None:
    parse_clip_spec(model_name)
    resolve_caption_model(caption_model)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CLIP embeddings, ranking and clip-interrogator prompts behind one batched API."""


@main.command(context_settings={"ignore_unknown_options": True})
@model_option
@caption_option
@cache_option
@click.option("--host", default=None, help="Bind address (BentoML's default: 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Port (BentoML's default: 3000).")
@click.argument("bentoml_args", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def serve(
    model_name: str,
    caption_model: str,
    label_cache_dir: Path | None,
    host: str | None,
    port: int | None,
    bentoml_args: tuple[str, ...],
) -> None:
    """Run `bentoml serve service:ClipApi` with these models.

    Other options go to `bentoml serve` as they are (e.g. --development, --reload).
    The model spec string is passed as given: label caches made by `warm-cache` with the
    same string are found.
    """
    check_specs(model_name, caption_model)
    env = {**os.environ, "CLIP_MODEL": model_name, "CAPTION_MODEL": caption_model}
    if label_cache_dir is not None:
        env["LABEL_CACHE_DIR"] = str(label_cache_dir.resolve())
    command = [sys.executable, "-m", "bentoml", "serve", "service:ClipApi"]
    command += [*(["--host", host] if host else []), *(["--port", str(port)] if port else [])]
    os.execve(sys.executable, [*command, *bentoml_args], env)


def _absolute(spec: str) -> str:
    """A spec naming a relative directory, made absolute (a Bento runs elsewhere)."""
    prefix = "local-dir:" if spec.startswith("local-dir:") else ""
    path = Path(spec.removeprefix(prefix)).expanduser()
    return f"{prefix}{path.resolve()}" if path.is_dir() else spec


@main.command()
@model_option
@caption_option
@cache_option
@click.option("--with-label-cache", is_flag=True, help="Ship the label-table embeddings.")
@click.option("-f", "--bentofile", default="bentofile.yaml", show_default=True,
              help="bentofile.gpu.yaml for the CUDA build.")  # fmt: skip
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="The repository (where the bentofile is).")  # fmt: skip
@one_line_errors
def build(
    model_name: str,
    caption_model: str,
    label_cache_dir: Path | None,
    with_label_cache: bool,
    bentofile: str,
    project_dir: Path,
) -> None:
    """Build a Bento serving these models (set as CLIP_MODEL / CAPTION_MODEL in it).

    With --with-label-cache the interrogation label tables are built here first (reusing
    LABEL_CACHE_DIR) and shipped in the Bento, so it never encodes them at start-up.
    """
    from clip_service.cli.bento_build import build_bento

    if not (project_dir / bentofile).is_file():
        raise click.ClickException(f"{project_dir / bentofile}: no such bentofile")
    check_specs(model_name, caption_model)
    envs = {"CLIP_MODEL": _absolute(model_name), "CAPTION_MODEL": _absolute(caption_model)}
    label_cache = None
    if with_label_cache:
        settings = settings_with(clip_model=envs["CLIP_MODEL"], label_cache_dir=label_cache_dir)
        model = load_configured_clip_model(settings)

        def label_cache(target: Path) -> None:
            download = settings.label_tables_download
            cache = warm_label_cache(model, settings.label_cache_dir, download)
            target.mkdir(parents=True)
            for table in read_label_tables().values():
                shutil.copy2(cache.path(table), target)

    tag = build_bento(project_dir.resolve(), bentofile, envs, label_cache)
    click.echo(f"Built {tag}")


@main.command("list-models")
@click.argument("contains", required=False, default="")
def list_models(contains: str) -> None:
    """Model specs to pass as --model-name / --caption-model (filtered by CONTAINS)."""
    import open_clip

    def section(title: str, lines: Sequence[str]) -> None:
        shown = [line for line in lines if contains.lower() in line.lower()]
        if shown:
            click.echo(f"# {title}")
            click.echo("\n".join(shown))

    section("presets (CLIP model, caption model)", [f"{n}: {c} {b}" for n, c, b in PRESETS])
    section("open_clip pretrained (ARCH:tag)", [f"{a}:{t}" for a, t in open_clip.list_pretrained()])
    section("Hugging Face repositories (commonly used)", list(COMMON_HF_MODELS))
    captions = [f"{alias} ({resolve_caption_model(alias)})" for alias in CAPTION_ALIASES]
    section("caption models (or an HF repo id / save_pretrained directory)", captions)
    click.echo("# or a local directory: transformers (config.json) or open_clip format")


@main.command("warm-cache")
@model_option
@cache_option
@one_line_errors
def warm_cache(model_name: str, label_cache_dir: Path | None) -> None:
    """Build the interrogation label-table embeddings ahead of time, in this process.

    They are written where the server looks (LABEL_CACHE_DIR), keyed by the model spec:
    serve with the same CLIP_MODEL string and it loads them instead of encoding ~112k texts.
    """
    settings = settings_with(clip_model=model_name, label_cache_dir=label_cache_dir)
    model = load_configured_clip_model(settings)
    cache = warm_label_cache(model, settings.label_cache_dir, settings.label_tables_download)
    click.echo(
        f"label tables for {model_name!r} in {settings.label_cache_dir}: {cache.built} built, "
        f"{cache.fetched} downloaded, {cache.loaded} already there"
    )


@main.command("encode-dir")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="npy layout: vectors.npy (+ vectors.files.txt, vectors.json beside it); "
              "clip-retrieval layout: a folder (img_emb/, metadata/).")  # fmt: skip
@click.option("--layout", type=click.Choice(["npy", "clip-retrieval"]), default="npy",
              show_default=True, help="clip-retrieval: normalised float16 parts that "
              "autofaiss and clip-retrieval read (docs/dataset.md).")  # fmt: skip
@click.option("--url", "--server", "server", default=None,
              help="A running server's URL; default: in process.")  # fmt: skip
@click.option("--api-key", envvar="CLIP_SERVICE_API_KEY", default=None,
              help="The server's API key (default: CLIP_SERVICE_API_KEY).")  # fmt: skip
@model_option
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@one_line_errors
def encode_dir(
    directory: Path,
    out: Path,
    layout: str,
    server: str | None,
    api_key: str | None,
    model_name: str,
    batch_size: int,
) -> None:
    """Embed every image under DIRECTORY (recursively); re-run to resume.

    In process, the model is loaded as the server loads it (--model-name, DEVICE...) and
    images are decoded and preprocessed as the server does, so vectors match /encode's.
    """
    from clip_service.cli.bulk_encode import EmbeddingStore, InProcessEncoder, ServerEncoder
    from clip_service.cli.bulk_encode import encode_dir as run
    from clip_service.cli.index_folder import IndexFolder

    if not directory.is_dir():
        raise click.ClickException(f"{directory}: no such directory")
    if server is not None:
        encoder = ServerEncoder(server, api_key=api_key)
    else:
        settings = settings_with(clip_model=model_name)
        encoder = InProcessEncoder(load_configured_clip_model(settings), settings.max_image_pixels)
    store = (IndexFolder if layout == "clip-retrieval" else EmbeddingStore)(out, encoder.model)
    try:
        summary = run(directory, store, encoder, batch_size)
    except KeyboardInterrupt:
        raise click.ClickException("interrupted: finished batches are kept; run again") from None
    finally:
        store.close()
    for name, problem in summary.failed:
        click.echo(f"skipped {name}: {problem}", err=True)
    click.echo(
        f"{out}: {summary.encoded} encoded, {summary.already} already there, "
        f"{len(summary.failed)} skipped"
    )


@main.command("caption-dir")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--url", "--server", "url", default=None,
              help="A running server's URL; default: the models in this process.")  # fmt: skip
@click.option("--api-key", envvar="CLIP_SERVICE_API_KEY", default=None,
              help="The server's API key (default: CLIP_SERVICE_API_KEY).")  # fmt: skip
@click.option("--mode", type=click.Choice(MODES), default=CAPTION, show_default=True,
              help="caption: the captioner's caption; best, classic, fast, negative: the "
              "interrogation prompt of that mode.")  # fmt: skip
@click.option("--detail", "--caption-detail", "detail", default=None,
              help="The caption's level of detail (brief, detailed, more_detailed), sent to "
              "a server as caption_detail; for captioners with levels (Florence-2).")  # fmt: skip
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="One JSONL file (file_name, text, ...) instead of NAME.txt beside each "
              "image.")  # fmt: skip
@click.option("--prefix", default="", help="Text before each caption, e.g. 'mytoken, '.")
@click.option("--suffix", default="", help="Text after each caption.")
@click.option("--overwrite", is_flag=True, help="Describe again the images already done.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images in flight: raise it with the server's replicas.")  # fmt: skip
@model_option
@caption_option
@cache_option
@one_line_errors
def caption_dir(
    directory: Path,
    url: str | None,
    api_key: str | None,
    mode: str,
    detail: str | None,
    jsonl: Path | None,
    prefix: str,
    suffix: str,
    overwrite: bool,
    concurrency: int,
    model_name: str,
    caption_model: str,
    label_cache_dir: Path | None,
) -> None:
    """Caption (or interrogate) every image under DIRECTORY, recursively; re-run to resume.

    Each result is written as it arrives: NAME.txt beside the image (the LoRA trainers'
    convention; one that has text is done), or a line of --jsonl. Files that are not images
    are left alone; images that cannot be read are reported and skipped.
    """
    from clip_service.cli.caption_dir import JsonLines, TextFiles, Texts
    from clip_service.cli.caption_dir import caption_dir as run
    from clip_service.cli.caption_targets import InProcess, ServerTarget

    if not directory.is_dir():
        raise click.ClickException(f"{directory}: no such directory")
    if url is not None:
        target: ServerTarget | InProcess = ServerTarget(url, mode, api_key=api_key, detail=detail)
    else:
        settings = settings_with(
            clip_model=model_name, caption_model=caption_model, label_cache_dir=label_cache_dir
        )
        target = InProcess(settings, mode, detail)
    output = JsonLines(jsonl, overwrite) if jsonl else TextFiles(directory, overwrite)

    async def describe_all() -> Summary:
        try:
            if isinstance(target, ServerTarget):
                await target.check()
            else:
                await target.start(concurrency)
            texts = Texts(prefix, suffix)
            return await run(directory, target, output, texts=texts, concurrency=concurrency)
        finally:
            if isinstance(target, ServerTarget):
                await target.close()

    try:
        summary = asyncio.run(describe_all())
    except KeyboardInterrupt:
        raise click.ClickException("interrupted: what was written is kept; run again") from None
    finally:
        output.close()
    if summary.ignored:
        click.echo(f"ignored {len(summary.ignored)} files that are not images", err=True)
    click.echo(
        f"{jsonl or directory}: {summary.written} written, {summary.already} already there, "
        f"{len(summary.failed)} skipped"
    )


if __name__ == "__main__":
    main()
