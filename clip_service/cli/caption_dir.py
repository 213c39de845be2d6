"""`clip-service caption-dir`: a caption or prompt for every image under a folder.

The client reads the folder and sends the images (``--url``: a running server, which never
sees a path; or a :class:`~clip_service.cli.caption_targets.InProcess` target). Results go
to ``<stem>.txt`` beside each image (the LoRA trainers' convention) or to one JSONL file,
each written as it arrives, so an interrupted run keeps everything finished and a re-run
does only what is missing. ``concurrency`` requests are kept in flight, so a server's
replicas and its batcher are kept busy.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from clip_service.cli.bulk_encode import BulkEncodeError, split_files


class Skip(Exception):
    """This image cannot be captioned (not an image, too large...); the run goes on."""


@dataclass(frozen=True)
class Result:
    """What a target answers for one image: its caption and, when interrogating, the prompt."""

    caption: str
    prompt: str | None = None


class Target(Protocol):
    """A server or this process: image bytes in, a caption (or prompt) out."""

    async def describe(self, data: bytes) -> Result:
        """Raises :class:`Skip` for a bad image, :class:`BulkEncodeError` to stop the run."""
        ...


class Output(Protocol):
    """Where results go: which images are done, and one atomic write per result."""

    def key(self, name: str) -> str: ...
    def done(self, names: Sequence[str]) -> set[str]: ...
    def write(self, name: str, text: str, result: Result) -> None: ...
    def close(self) -> None: ...


class TextFiles:
    """``<stem>.txt`` beside each image; one with any text in it counts as done."""

    def __init__(self, root: Path, overwrite: bool) -> None:
        self.root, self.overwrite = root, overwrite

    def key(self, name: str) -> str:
        return Path(name).with_suffix(".txt").as_posix()

    def done(self, names: Sequence[str]) -> set[str]:
        if self.overwrite:
            return set()
        return {n for n in names if _has_text(self.root / self.key(n))}

    def write(self, name: str, text: str, result: Result) -> None:
        """Written beside, then renamed over: a reader (or a kill) never sees half a file."""
        path = self.root / self.key(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def close(self) -> None:
        pass


def _has_text(path: Path) -> bool:
    try:
        return bool(path.read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return False


class JsonLines:
    """One JSON object a line: ``file_name`` (relative to the folder), ``text`` and what
    the target answered; Hugging Face's ``imagefolder`` reads it as ``metadata.jsonl``.

    Lines are appended and flushed one at a time; a last line an interruption cut short is
    dropped when the file is opened again. ``overwrite`` starts the file afresh.
    """

    def __init__(self, path: Path, overwrite: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            path.write_bytes(b"")
        self.recorded = self._repair(path)
        self.file = path.open("a", encoding="utf-8")

    @staticmethod
    def _repair(path: Path) -> set[str]:
        if not path.exists():
            return set()
        data = path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            path.write_bytes(whole)
        recorded = set()
        for number, line in enumerate(whole.decode("utf-8").splitlines(), 1):
            try:
                recorded.add(json.loads(line)["file_name"])
            except (ValueError, KeyError, TypeError):
                raise BulkEncodeError(f"{path}:{number}: not a record of caption-dir") from None
        return recorded

    def key(self, name: str) -> str:
        return name

    def done(self, names: Sequence[str]) -> set[str]:
        return self.recorded.intersection(names)

    def write(self, name: str, text: str, result: Result) -> None:
        record = {"file_name": name, "text": text, "caption": result.caption}
        if result.prompt is not None:
            record["prompt"] = result.prompt
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class Summary:
    written: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files that are not images


@dataclass(frozen=True)
class Texts:
    """What surrounds each result in the output (trainers often want a trigger word)."""

    prefix: str = ""
    suffix: str = ""

    def __call__(self, result: Result) -> str:
        text = result.caption if result.prompt is None else result.prompt
        return f"{self.prefix}{text}{self.suffix}"


def plan(root: Path, output: Output, summary: Summary) -> list[str]:
    """The images still to do, in path order; the rest is counted in ``summary``."""
    images, others = split_files(root)
    owners: dict[str, str] = {}
    todo = []
    for name in images:
        key = output.key(name)
        if key in owners:  # a.png and a.jpg would share a.txt: the first one keeps it
            summary.failed.append((name, f"{key} belongs to {owners[key]}"))
            continue
        owners[key] = name
        todo.append(name)
    summary.ignored = [name for name in others if name not in owners]  # not our .txt files
    done = output.done(todo)
    summary.already = len(done)
    return [n for n in todo if n not in done]


async def caption_dir(
    root: Path,
    target: Target,
    output: Output,
    *,
    texts: Texts = Texts(),
    concurrency: int = 8,
    progress: bool = True,
) -> Summary:
    """Describe every image under ``root`` that ``output`` lacks, ``concurrency`` at a time."""
    summary = Summary()
    todo = plan(root, output, summary)
    queue = iter(todo)
    with tqdm(total=len(todo), unit="img", disable=not progress) as bar:

        def skipped(name: str, problem: str) -> None:
            summary.failed.append((name, problem))
            bar.write(f"skipped {name}: {problem}")

        for name, problem in summary.failed:  # found by plan()
            bar.write(f"skipped {name}: {problem}")

        async def worker() -> None:
            for name in queue:  # shared: each name is taken by one worker
                try:
                    data = await asyncio.to_thread((root / name).read_bytes)
                    result = await target.describe(data)
                except (Skip, OSError) as exc:
                    skipped(name, str(exc))
                else:
                    try:
                        output.write(name, texts(result), result)
                    except OSError as exc:  # a read-only folder, a full disk: stop here
                        raise BulkEncodeError(f"{name}: cannot write its result: {exc}") from None
                    summary.written += 1
                bar.update()

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(todo))):
                    group.create_task(worker())
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
    return summary
