"""Where the custom label tables' lists are kept: a directory on one host (one
``<name>.txt`` per table, one term per line; written by uploads or by hand), or Redis
across hosts (:class:`clip_service.state.redis_tables.RedisTableLists`). Each model worker
reads them and embeds what changed (:class:`~.custom_tables.CustomTables`)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Protocol

from clip_service.errors import InvalidInput
from clip_service.interrogation.labels import LabelTable

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SUFFIX = ".txt"

# A list as read: its table, or what is wrong with it (a hand-written file may be bad).
Read = LabelTable | str


class TableLists(Protocol):
    async def read(self, check: CheckTable) -> dict[str, Read]:
        """Every list by name, checked by ``check``."""

    async def write(self, table: LabelTable, max_tables: int) -> bool:
        """Store a list (replacing one of the same name); False when there are already
        ``max_tables`` others."""

    async def remove(self, name: str) -> bool:
        """Drop a list; False when there is none of that name."""


class CheckTable(Protocol):
    def __call__(self, name: str, labels: list[str]) -> LabelTable: ...


def parse(name: str, text: str, check: CheckTable, where: str) -> Read:
    """A stored list's table, or what is wrong with it (naming ``where`` it is)."""
    labels = [line.strip() for line in text.splitlines()]
    try:
        return check(name, [label for label in labels if label])
    except InvalidInput as exc:
        return f"{where}: {exc}"


def unparse(table: LabelTable) -> str:
    return "\n".join(table.labels) + "\n"


class DirectoryTableLists:
    """The lists as files in one directory, which every worker of the host reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Each file as last read, keyed by name: ((mtime, size), what was read).
        self._read: dict[str, tuple[tuple[int, int], Read]] = {}

    async def read(self, check: CheckTable) -> dict[str, Read]:
        """Only the files whose size or modification time changed are read again."""
        self._read = {name: self._read_file(name, path, check) for name, path in self._files()}
        return {name: read for name, (_, read) in self._read.items()}

    async def write(self, table: LabelTable, max_tables: int) -> bool:
        names = {name for name, _ in self._files()}
        if table.name not in names and len(names) >= max_tables:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{table.name}{SUFFIX}"
        # A name of its own: writers in other containers sharing the folder may have this pid.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(unparse(table), encoding="utf-8")
        os.replace(tmp, path)
        return True

    async def remove(self, name: str) -> bool:
        path = self.directory / f"{name}{SUFFIX}"
        if not NAME.fullmatch(name) or not path.is_file():
            return False
        path.unlink()
        return True

    def _read_file(self, name: str, path: Path, check: CheckTable) -> tuple[tuple[int, int], Read]:
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        last = self._read.get(name)
        if last is not None and last[0] == signature:
            return last
        return signature, parse(name, path.read_text("utf-8", "replace"), check, str(path))

    def _files(self) -> list[tuple[str, Path]]:
        if not self.directory.is_dir():
            return []
        return [
            (path.name[: -len(SUFFIX)], path)
            for path in sorted(self.directory.glob(f"*{SUFFIX}"))
            if NAME.fullmatch(path.name[: -len(SUFFIX)])
        ]
